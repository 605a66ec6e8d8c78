//! Adadelta, as PyTorch implements it (candle-nn ships SGD and AdamW only). PyTorch's
//! MNIST example trains with it at lr 1.0 and a StepLR decay of 0.7 per epoch.

use candle_core::backprop::GradStore;
use std::sync::Mutex;

use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor, Var};
use candle_nn::Optimizer;

/// Adadelta's settings; the defaults are PyTorch's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamsAdadelta {
    /// The learning rate (1.0).
    pub lr: f64,
    /// Decay of the running averages.
    pub rho: f64,
    /// Added under each square root, for stability (1e-6).
    pub eps: f64,
}

impl Default for ParamsAdadelta {
    fn default() -> Self {
        Self {
            lr: 1.0,
            rho: 0.9,
            eps: 1e-6,
        }
    }
}

struct State {
    var: Var,
    averages: Averages,
}

/// The running averages of squared gradients (`square_avg`) and squared updates
/// (`acc_delta`).
enum Averages {
    /// On the CPU, one buffer, `square_avg` then `acc_delta`, updated in place.
    Host(Mutex<Vec<f32>>),
    /// On a GPU, tensors updated with candle's operations.
    Device { square_avg: Var, acc_delta: Var },
}

impl State {
    fn new(var: Var) -> Result<Self> {
        let averages = if var.device().is_cpu() {
            Averages::Host(Mutex::new(vec![0.0; 2 * var.elem_count()]))
        } else {
            let zeros = var.zeros_like()?;
            Averages::Device {
                square_avg: Var::from_tensor(&zeros)?,
                acc_delta: Var::from_tensor(&zeros)?,
            }
        };
        Ok(Self { var, averages })
    }

    fn averages(&self) -> Result<(Tensor, Tensor)> {
        match &self.averages {
            Averages::Host(buffer) => {
                let buffer = lock(buffer)?;
                let (square_avg, acc_delta) = buffer.split_at(buffer.len() / 2);
                let tensor =
                    |values| Tensor::from_slice(values, self.var.shape(), self.var.device());
                Ok((tensor(square_avg)?, tensor(acc_delta)?))
            }
            Averages::Device {
                square_avg,
                acc_delta,
            } => Ok((
                square_avg.as_tensor().clone(),
                acc_delta.as_tensor().clone(),
            )),
        }
    }

    fn restore(&self, square_avg: &Tensor, acc_delta: &Tensor) -> Result<()> {
        match &self.averages {
            Averages::Host(buffer) => {
                let mut values = square_avg.flatten_all()?.to_vec1::<f32>()?;
                values.extend(acc_delta.flatten_all()?.to_vec1::<f32>()?);
                *lock(buffer)? = values;
                Ok(())
            }
            Averages::Device {
                square_avg: s,
                acc_delta: a,
            } => {
                s.set(square_avg)?;
                a.set(acc_delta)
            }
        }
    }

    fn step(&self, grad: &Tensor, params: ParamsAdadelta) -> Result<()> {
        match &self.averages {
            Averages::Host(buffer) => self.var.inplace_op2(
                &grad.contiguous()?,
                &FusedStep {
                    params,
                    averages: buffer,
                },
            ),
            Averages::Device {
                square_avg,
                acc_delta,
            } => {
                let ParamsAdadelta { lr, rho, eps } = params;
                let new_square_avg =
                    ((square_avg.as_tensor() * rho)? + (grad.sqr()? * (1.0 - rho))?)?;
                let delta = (((acc_delta.as_tensor() + eps)?.sqrt()?
                    / (&new_square_avg + eps)?.sqrt()?)?
                    * grad)?;
                let new_acc_delta =
                    ((acc_delta.as_tensor() * rho)? + (delta.sqr()? * (1.0 - rho))?)?;
                self.var.set(&(self.var.as_tensor() - (delta * lr)?)?)?;
                square_avg.set(&new_square_avg)?;
                acc_delta.set(&new_acc_delta)
            }
        }
    }
}

fn lock(buffer: &Mutex<Vec<f32>>) -> Result<std::sync::MutexGuard<'_, Vec<f32>>> {
    buffer
        .lock()
        .map_err(|_| candle_core::Error::Msg("adadelta state lock poisoned".into()))
}

/// PyTorch's Adadelta update of one weight tensor, in place, in one pass.
struct FusedStep<'a> {
    params: ParamsAdadelta,
    averages: &'a Mutex<Vec<f32>>,
}

impl InplaceOp2 for FusedStep<'_> {
    fn name(&self) -> &'static str {
        "adadelta-step"
    }

    fn cpu_fwd(
        &self,
        weight: &mut CpuStorage,
        weight_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<()> {
        let (Some((w0, w1)), Some((g0, g1))) = (
            weight_layout.contiguous_offsets(),
            grad_layout.contiguous_offsets(),
        ) else {
            candle_core::bail!("adadelta needs contiguous tensors")
        };
        let (CpuStorage::F32(weight), CpuStorage::F32(grad)) = (weight, grad) else {
            candle_core::bail!("adadelta's fused step is for f32 weights")
        };
        let mut averages = lock(self.averages)?;
        let n = w1 - w0;
        if g1 - g0 != n || averages.len() != 2 * n {
            candle_core::bail!("adadelta's weight, gradient and averages differ in size")
        }
        let (square_avg, acc_delta) = averages.split_at_mut(n);
        let ParamsAdadelta { lr, rho, eps } = self.params;
        let (lr, rho, eps) = (lr as f32, rho as f32, eps as f32);
        let rows = weight[w0..w1]
            .iter_mut()
            .zip(&grad[g0..g1])
            .zip(square_avg.iter_mut().zip(acc_delta.iter_mut()));
        for ((w, &g), (sq, acc)) in rows {
            *sq = *sq * rho + g * g * (1.0 - rho);
            let delta = (*acc + eps).sqrt() / (*sq + eps).sqrt() * g;
            *acc = *acc * rho + delta * delta * (1.0 - rho);
            *w -= delta * lr;
        }
        Ok(())
    }
}

/// The optimizer: a state per float variable, stepped as PyTorch's `torch.optim.Adadelta`.
pub struct Adadelta {
    states: Vec<State>,
    params: ParamsAdadelta,
}

impl Adadelta {
    /// The running averages, per variable: what a checkpoint keeps.
    pub fn averages(&self) -> Result<Vec<(Tensor, Tensor)>> {
        self.states.iter().map(State::averages).collect()
    }

    /// Restores the running averages `averages` gave.
    pub fn restore(&self, averages: &[(Tensor, Tensor)]) -> Result<()> {
        for (state, (square_avg, acc_delta)) in self.states.iter().zip(averages) {
            state.restore(square_avg, acc_delta)?;
        }
        Ok(())
    }
}

impl Optimizer for Adadelta {
    type Config = ParamsAdadelta;

    fn new(vars: Vec<Var>, params: ParamsAdadelta) -> Result<Self> {
        let states = vars
            .into_iter()
            .filter(|var| var.dtype().is_float())
            .map(State::new)
            .collect::<Result<_>>()?;
        Ok(Self { states, params })
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        for state in &self.states {
            if let Some(grad) = grads.get(&state.var) {
                state.step(grad, self.params)?;
            }
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn one_step_matches_pytorchs_update() {
        // torch.optim.Adadelta([x], lr=1.0) on loss = sum(x^2) from x = [1, -2]:
        // g = 2x; square_avg = 0.1 g^2; delta = sqrt(1e-6) / sqrt(square_avg + 1e-6) * g.
        let x = Var::new(&[1.0f32, -2.0], &Device::Cpu).expect("var");
        let mut opt = Adadelta::new(vec![x.clone()], ParamsAdadelta::default()).expect("opt");
        let loss = x.as_tensor().sqr().and_then(|t| t.sum_all()).expect("loss");
        opt.backward_step(&loss).expect("step");
        let got = x.as_tensor().to_vec1::<f32>().expect("values");
        for (before, after) in [1.0f64, -2.0].iter().zip(got) {
            let g = 2.0 * before;
            let delta = (1e-6f64).sqrt() / (0.1 * g * g + 1e-6).sqrt() * g;
            assert!(
                (f64::from(after) - (before - delta)).abs() < 1e-6,
                "{after}"
            );
        }
    }
}
