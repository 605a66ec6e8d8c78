//! Adadelta, as PyTorch implements it (candle-nn ships SGD and AdamW only). PyTorch's
//! MNIST example trains with it at lr 1.0 and a StepLR decay of 0.7 per epoch.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use candle_nn::Optimizer;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamsAdadelta {
    pub lr: f64,
    /// Decay of the running averages.
    pub rho: f64,
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
    /// Running average of squared gradients.
    square_avg: Var,
    /// Running average of squared updates.
    acc_delta: Var,
}

pub struct Adadelta {
    states: Vec<State>,
    params: ParamsAdadelta,
}

impl Adadelta {
    /// The running averages, per variable: what a checkpoint keeps.
    pub fn averages(&self) -> Vec<(Tensor, Tensor)> {
        self.states
            .iter()
            .map(|s| {
                (
                    s.square_avg.as_tensor().clone(),
                    s.acc_delta.as_tensor().clone(),
                )
            })
            .collect()
    }

    /// Restores the running averages `averages` gave.
    pub fn restore(&self, averages: &[(Tensor, Tensor)]) -> Result<()> {
        for (state, (square_avg, acc_delta)) in self.states.iter().zip(averages) {
            state.square_avg.set(square_avg)?;
            state.acc_delta.set(acc_delta)?;
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
            .map(|var| {
                let zeros = var.zeros_like()?;
                Ok(State {
                    square_avg: Var::from_tensor(&zeros)?,
                    acc_delta: Var::from_tensor(&zeros)?,
                    var,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { states, params })
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let ParamsAdadelta { lr, rho, eps } = self.params;
        for state in &self.states {
            let Some(grad) = grads.get(&state.var) else {
                continue;
            };
            let square_avg =
                ((state.square_avg.as_tensor() * rho)? + (grad.sqr()? * (1.0 - rho))?)?;
            let delta = (((state.acc_delta.as_tensor() + eps)?.sqrt()?
                / (&square_avg + eps)?.sqrt()?)?
                * grad)?;
            let acc_delta = ((state.acc_delta.as_tensor() * rho)? + (delta.sqr()? * (1.0 - rho))?)?;
            state.var.set(&(state.var.as_tensor() - (delta * lr)?)?)?;
            state.square_avg.set(&square_avg)?;
            state.acc_delta.set(&acc_delta)?;
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
