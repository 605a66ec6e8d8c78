"""/predict as a plain Python deployment serves it: FastAPI + uvicorn + PyTorch, one
image per request. The weights come from a file the PyTorch peer saved rather than from
the lake, which leaves the request path unchanged.

    python fastapi_serve.py --weights FILE --port N --threads 2
"""
import argparse
import io

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from pytorch_train import Net as MnistCNN


class PredictRequest(BaseModel):
    image: list[float]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with open(args.weights, "rb") as f:
        weights_bytes = f.read()
    model = MnistCNN()
    model.load_state_dict(torch.load(io.BytesIO(weights_bytes), weights_only=True))
    model.eval()

    app = FastAPI()

    @app.post("/predict")
    def predict(body: PredictRequest):
        tensor = torch.tensor(body.image).reshape(1, 1, 28, 28)
        with torch.no_grad():
            output = model(tensor)
        probs = torch.softmax(output, dim=1)
        return {
            "prediction": probs.argmax().item(),
            "confidence": probs.max().item(),
            "probabilities": probs[0].tolist(),
        }

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
