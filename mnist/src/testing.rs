//! Checks shared by the custom ops' tests.

use candle_core::{Result, Tensor, Var};

/// Asserts that `ours` equals `reference` within 1e-3, and that the gradients of the sum
/// of its squares reach every one of `vars` within 1e-4 (relative) of the reference's.
pub(crate) fn assert_same_values_and_gradients(
    vars: &[&Var],
    ours: &Tensor,
    reference: &Tensor,
) -> Result<()> {
    let difference = (ours - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(difference < 1e-3, "forward differs by {difference}");
    let ours_grads = ours.sqr()?.sum_all()?.backward()?;
    let reference_grads = reference.sqr()?.sum_all()?.backward()?;
    for var in vars {
        let a = ours_grads.get(var).expect("gradient");
        let b = reference_grads.get(var).expect("gradient");
        let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
        let difference = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()? / scale;
        assert!(
            difference < 1e-4,
            "gradient differs by {difference} (relative)"
        );
    }
    Ok(())
}
