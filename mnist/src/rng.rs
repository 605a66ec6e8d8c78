//! A small seeded generator (SplitMix64) for weight init, shuffling and dropout.
//! It lives in this crate so it is compiled optimised with the training loop, and it is
//! fully determined by its seed: the same seed trains the same model.

/// SplitMix64: one 64-bit word of state, advanced once per draw.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator starting at `seed` (or at a saved [`Rng::state`]).
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The whole state: `Rng::new(state)` continues where this one is.
    pub fn state(&self) -> u64 {
        self.state
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [low, high).
    pub fn uniform(&mut self, low: f32, high: f32) -> f32 {
        low + (high - low) * self.next_f32()
    }

    /// Uniform in [-max, max].
    pub fn offset(&mut self, max: usize) -> isize {
        (self.next_u64() % (2 * max as u64 + 1)) as isize - max as isize
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn the_same_seed_gives_the_same_stream_and_floats_stay_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert_eq!(
            (0..100).map(|_| a.next_u64()).collect::<Vec<_>>(),
            (0..100).map(|_| b.next_u64()).collect::<Vec<_>>()
        );
        let mut r = Rng::new(1);
        let samples: Vec<f32> = (0..10_000).map(|_| r.next_f32()).collect();
        assert!(samples.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = samples.iter().sum::<f32>() / samples.len() as f32;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        let mut items: Vec<u32> = (0..50).collect();
        r.shuffle(&mut items);
        let mut sorted = items.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(items, sorted);
        let offsets: Vec<isize> = (0..1000).map(|_| r.offset(2)).collect();
        for value in -2..=2 {
            assert!(offsets.contains(&value), "{value} never drawn");
        }
        assert!(offsets.iter().all(|o| o.abs() <= 2));
        assert_eq!(r.offset(0), 0);
    }
}
