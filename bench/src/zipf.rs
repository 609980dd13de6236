//! Zipfian sampling over `1..=n` by rejection-inversion (Hörmann and Derflinger, "Rejection-
//! inversion to generate variates from monotone discrete distributions", 1996): constant
//! time and memory per sample whatever `n`, any exponent > 0 (1 included).

use rand::Rng;

/// Samples ranks `1..=n` with probability proportional to `1 / k^exponent`.
#[derive(Clone, Debug)]
pub struct Zipf {
    n: f64,
    exponent: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    s: f64,
}

impl Zipf {
    /// `n >= 1`, `exponent > 0` and finite.
    pub fn new(n: u64, exponent: f64) -> anyhow::Result<Zipf> {
        anyhow::ensure!(n >= 1, "a zipfian distribution needs at least one element");
        anyhow::ensure!(
            exponent.is_finite() && exponent > 0.0,
            "the zipfian exponent must be a positive number, not {exponent}"
        );
        let mut zipf = Zipf { n: n as f64, exponent, h_integral_x1: 0.0, h_integral_n: 0.0, s: 0.0 };
        zipf.h_integral_x1 = zipf.h_integral(1.5) - 1.0;
        zipf.h_integral_n = zipf.h_integral(zipf.n + 0.5);
        zipf.s = 2.0 - zipf.h_integral_inverse(zipf.h_integral(2.5) - zipf.h(2.0));
        Ok(zipf)
    }

    /// A rank in `1..=n`; 1 is the most frequent.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        loop {
            let u = self.h_integral_n + rng.r#gen::<f64>() * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            let k = (x + 0.5).floor().clamp(1.0, self.n);
            if k - x <= self.s || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k as u64;
            }
        }
    }

    fn h(&self, x: f64) -> f64 {
        (-self.exponent * x.ln()).exp()
    }

    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        helper2((1.0 - self.exponent) * log_x) * log_x
    }

    fn h_integral_inverse(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.exponent)).max(-1.0);
        (helper1(t) * x).exp()
    }
}

/// `ln(1 + x) / x`, accurate near 0.
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 { x.ln_1p() / x } else { 1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x)) }
}

/// `(e^x - 1) / x`, accurate near 0.
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 { x.exp_m1() / x } else { 1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x)) }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn samples_stay_in_bounds() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (n, exponent) in [(1u64, 1.0), (2, 0.5), (10, 1.0), (1000, 0.99), (1000, 2.5), (u32::MAX as u64, 1.2)] {
            let zipf = Zipf::new(n, exponent).unwrap();
            for _ in 0..20_000 {
                let k = zipf.sample(&mut rng);
                assert!((1..=n).contains(&k), "rank {k} outside 1..={n} (exponent {exponent})");
            }
        }
    }

    #[test]
    fn frequencies_follow_the_law() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let n = 100u64;
        let zipf = Zipf::new(n, 1.0).unwrap();
        let mut counts = vec![0u64; n as usize + 1];
        let draws = 200_000;
        for _ in 0..draws {
            counts[zipf.sample(&mut rng) as usize] += 1;
        }
        let harmonic: f64 = (1..=n).map(|k| 1.0 / k as f64).sum();
        for k in [1usize, 2, 5, 10] {
            let expected = draws as f64 / (k as f64 * harmonic);
            let got = counts[k] as f64;
            assert!((got - expected).abs() < expected * 0.05, "rank {k}: {got} draws, expected about {expected}");
        }
        assert!(counts[1] > counts[2] && counts[2] > counts[10] && counts[10] > counts[100]);
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(Zipf::new(0, 1.0).is_err());
        assert!(Zipf::new(10, 0.0).is_err());
        assert!(Zipf::new(10, f64::NAN).is_err());
    }
}
