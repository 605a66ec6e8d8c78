"""PyTorch's own MNIST example (github.com/pytorch/examples, mnist/main.py), as its CPU run
trains: the same net, Adadelta at lr 1.0, StepLR gamma 0.7, batch 64, test batch 1000,
torchvision's MNIST dataset with ToTensor + Normalize, and (as on a CPU) no shuffling.
The changes are the ones the benchmark needs: the IDX folder and thread count come from
the command line, the log lines are JSON, and the weights are saved where it is told.

    python pytorch_train.py --raw DIR --epochs N --threads 2 --save FILE
"""
import argparse
import gzip
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.optim.lr_scheduler import StepLR
from torchvision import datasets, transforms


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


def train(model, train_loader, optimizer):
    model.train()
    for data, target in train_loader:
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()


def test(model, test_loader):
    model.eval()
    test_loss = 0
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction="sum").item()
            pred = output.argmax(dim=1, keepdim=True)
            correct += pred.eq(target.view_as(pred)).sum().item()
    return test_loss / len(test_loader.dataset), correct / len(test_loader.dataset)


def torchvision_root(raw):
    """torchvision's MNIST reads the four uncompressed IDX files from ROOT/MNIST/raw."""
    root = Path(tempfile.mkdtemp(prefix="pytorch-mnist-"))
    into = root / "MNIST" / "raw"
    into.mkdir(parents=True)
    for path in Path(raw).iterdir():
        name = path.name.removesuffix(".gz")
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as src, open(into / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return root


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--raw", required=True)
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    root = torchvision_root(args.raw)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    dataset1 = datasets.MNIST(root, train=True, download=False, transform=transform)
    dataset2 = datasets.MNIST(root, train=False, transform=transform)
    train_loader = torch.utils.data.DataLoader(dataset1, batch_size=64)
    test_loader = torch.utils.data.DataLoader(dataset2, batch_size=1000)
    model = Net()
    optimizer = optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
    for epoch in range(1, args.epochs + 1):
        started = time.perf_counter()
        train(model, train_loader, optimizer)
        loss, accuracy = test(model, test_loader)
        scheduler.step()
        seconds = time.perf_counter() - started
        print(json.dumps({"epoch": epoch, "seconds": seconds, "loss": loss, "accuracy": accuracy}), flush=True)
    torch.save(model.state_dict(), args.save)
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
