//! Kubernetes resource quantities (`7800m`, `31Gi`, `1e9`, `0.5`), parsed exactly.
//!
//! Capacity checks compare sums of thousands of requests against allocatable, so the parser
//! must agree with the apiserver to the last byte: no floating point, and rounding *up* to the
//! unit asked for, as `Quantity.MilliValue()` / `Quantity.Value()` do (a request of `0.1m` CPU
//! takes a whole millicore on the node).
//!
//! Grammar (from `k8s.io/apimachinery/pkg/api/resource`):
//! `<sign>? (<digits> | <digits>. | <digits>.<digits> | .<digits>) <suffix>?`, where the suffix
//! is binary (`Ki Mi Gi Ti Pi Ei`), decimal (`n u m k M G T P E`) or an exponent (`e3`, `E-2`).

/// Why a quantity string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity '{input}': {reason}")]
pub struct QuantityError {
    /// The string as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A parsed quantity: `mantissa × 10^exp10 × 2^exp2`, exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    mantissa: i128,
    exp10: i32,
    exp2: u32,
}

/// Longest number part accepted: keeps the mantissa inside an `i128` (38 digits) without
/// a big-integer dependency; real quantities are far shorter.
const MAX_DIGITS: usize = 36;
/// Largest exponent magnitude accepted; anything beyond it saturates or rounds to nothing.
const MAX_EXPONENT: i32 = 1000;

impl Quantity {
    /// Parses a quantity as the apiserver writes it.
    pub fn parse(input: &str) -> Result<Quantity, QuantityError> {
        let err = |reason| QuantityError { input: input.to_string(), reason };
        let s = input.trim();
        let (negative, s) = match (s.strip_prefix('-'), s.strip_prefix('+')) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => (false, s),
        };
        let number_len = s.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.').count();
        let (number, suffix) = s.split_at(number_len);
        let (whole, fraction) = match number.split_once('.') {
            Some((w, f)) => (w, f),
            None => (number, ""),
        };
        if fraction.contains('.') {
            return Err(err("more than one decimal point"));
        }
        if whole.is_empty() && fraction.is_empty() {
            return Err(err("no digits"));
        }
        // Leading zeros and trailing fractional zeros carry no value: dropping them lets long
        // canonical forms ("0.000000001", "1.000") parse without widening the mantissa.
        let whole = whole.trim_start_matches('0');
        let fraction = fraction.trim_end_matches('0');
        if whole.len().saturating_add(fraction.len()) > MAX_DIGITS {
            return Err(err("too many digits"));
        }
        // At most MAX_DIGITS digits: none of the checked operations below can fail.
        let mut mantissa: i128 = 0;
        for c in whole.chars().chain(fraction.chars()) {
            let digit = c.to_digit(10).ok_or_else(|| err("no digits"))?;
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(i128::from(digit)))
                .ok_or_else(|| err("too many digits"))?;
        }
        if negative {
            mantissa = mantissa.checked_neg().ok_or_else(|| err("too many digits"))?;
        }
        let mut exp10 = i32::try_from(fraction.len())
            .ok()
            .and_then(i32::checked_neg)
            .ok_or_else(|| err("too many digits"))?;
        let mut exp2 = 0;
        match suffix {
            "" => {}
            "Ki" => exp2 = 10,
            "Mi" => exp2 = 20,
            "Gi" => exp2 = 30,
            "Ti" => exp2 = 40,
            "Pi" => exp2 = 50,
            "Ei" => exp2 = 60,
            "n" => exp10 = exp10.saturating_sub(9),
            "u" => exp10 = exp10.saturating_sub(6),
            "m" => exp10 = exp10.saturating_sub(3),
            "k" => exp10 = exp10.saturating_add(3),
            "M" => exp10 = exp10.saturating_add(6),
            "G" => exp10 = exp10.saturating_add(9),
            "T" => exp10 = exp10.saturating_add(12),
            "P" => exp10 = exp10.saturating_add(15),
            "E" => exp10 = exp10.saturating_add(18),
            _ => {
                let exponent = suffix
                    .strip_prefix('e')
                    .or_else(|| suffix.strip_prefix('E'))
                    .ok_or_else(|| err("unknown suffix"))?;
                let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err("malformed exponent"));
                }
                let e: i32 = exponent.parse().map_err(|_| err("exponent out of range"))?;
                if !(-MAX_EXPONENT..=MAX_EXPONENT).contains(&e) {
                    return Err(err("exponent out of range"));
                }
                exp10 = exp10.saturating_add(e);
            }
        }
        Ok(Quantity { mantissa, exp10, exp2 })
    }

    /// The value times `10^scale`, rounded up (towards positive infinity), saturating at the
    /// bounds of `i64` as the apiserver's own conversions do.
    pub fn scaled_ceil(self, scale: i32) -> i64 {
        if self.mantissa == 0 {
            return 0;
        }
        let saturated = if self.mantissa > 0 { i64::MAX } else { i64::MIN };
        let Some(numerator) = 2i128.checked_pow(self.exp2).and_then(|p| self.mantissa.checked_mul(p)) else {
            return saturated;
        };
        let exp = self.exp10.saturating_add(scale);
        let value = if exp >= 0 {
            match 10i128.checked_pow(exp.unsigned_abs()).and_then(|p| numerator.checked_mul(p)) {
                Some(v) => v,
                None => return saturated,
            }
        } else {
            match 10i128.checked_pow(exp.unsigned_abs()) {
                Some(divisor) => ceil_div(numerator, divisor),
                // Smaller than any representable unit: a positive value still takes one unit,
                // a negative one rounds up to zero.
                None => i128::from(numerator > 0),
            }
        };
        i64::try_from(value).unwrap_or(saturated)
    }
}

/// `n / d` rounded up; `d` is a positive power of ten (never zero, never -1).
fn ceil_div(n: i128, d: i128) -> i128 {
    match (n.checked_div(d), n.checked_rem(d)) {
        (Some(q), Some(r)) if r > 0 => q.saturating_add(1),
        (Some(q), _) => q,
        (None, _) => n,
    }
}

/// CPU in millicores (`"7800m"` → 7800, `"8"` → 8000, `"0.5"` → 500), rounded up.
pub fn cpu_millis(s: &str) -> Result<i64, QuantityError> {
    Quantity::parse(s).map(|q| q.scaled_ceil(3))
}

/// Memory (or any countable resource) in units (`"31Gi"` → 33285996544, `"1e9"`, `"512M"`),
/// rounded up.
pub fn bytes(s: &str) -> Result<i64, QuantityError> {
    Quantity::parse(s).map(|q| q.scaled_ceil(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cpu() {
        assert_eq!(cpu_millis("7800m"), Ok(7800));
        assert_eq!(cpu_millis("8"), Ok(8000));
        assert_eq!(cpu_millis("0.5"), Ok(500));
        assert_eq!(cpu_millis(".5"), Ok(500));
        assert_eq!(cpu_millis("1."), Ok(1000));
        assert_eq!(cpu_millis("100m"), Ok(100));
        assert_eq!(cpu_millis("1.5k"), Ok(1_500_000));
        assert_eq!(cpu_millis("250000u"), Ok(250));
        assert_eq!(cpu_millis("1u"), Ok(1), "rounds up like MilliValue()");
        assert_eq!(cpu_millis("0.0001"), Ok(1));
        assert_eq!(cpu_millis("-1u"), Ok(0), "rounds towards positive infinity");
        assert_eq!(cpu_millis("0"), Ok(0));
        assert_eq!(cpu_millis("+2"), Ok(2000));
    }

    #[test]
    fn memory() {
        assert_eq!(bytes("31Gi"), Ok(31 * (1 << 30)));
        assert_eq!(bytes("128Mi"), Ok(128 * (1 << 20)));
        assert_eq!(bytes("1e9"), Ok(1_000_000_000));
        assert_eq!(bytes("1E3"), Ok(1000));
        assert_eq!(bytes("1e+3"), Ok(1000));
        assert_eq!(bytes("15e-1"), Ok(2), "rounds up");
        assert_eq!(bytes("1000k"), Ok(1_000_000));
        assert_eq!(bytes("512M"), Ok(512_000_000));
        assert_eq!(bytes("1E"), Ok(1_000_000_000_000_000_000), "E alone is exa, not an exponent");
        assert_eq!(bytes("1Ei"), Ok(1 << 60));
        assert_eq!(bytes("134217728"), Ok(134_217_728));
        assert_eq!(bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(bytes("0.5Ki"), Ok(512));
        assert_eq!(bytes("1Ti"), Ok(1 << 40));
        assert_eq!(bytes("2Pi"), Ok(2 << 50));
        assert_eq!(bytes("-128Mi"), Ok(-128 * (1 << 20)));
    }

    #[test]
    fn huge_values_saturate_and_tiny_ones_round_up() {
        assert_eq!(bytes("100Ei"), Ok(i64::MAX));
        assert_eq!(bytes("1e100"), Ok(i64::MAX));
        assert_eq!(bytes("-1e100"), Ok(i64::MIN));
        assert_eq!(bytes("1e-100"), Ok(1));
        assert_eq!(bytes("-1e-100"), Ok(0));
        assert_eq!(bytes("0e1000"), Ok(0));
    }

    #[test]
    fn malformed_quantities_are_refused() {
        for bad in
            ["", "m", "abc", "1..2", "1.2.3", "1Q", "1e", "1e+", "1ee3", "1Gi2", "1 Gi", "--1", "1e5000"]
        {
            assert!(Quantity::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let e = cpu_millis("1Q").unwrap_err();
        assert!(e.to_string().contains("'1Q'") && e.to_string().contains("suffix"), "{e}");
    }

    proptest! {
        /// Every way of writing a millicore count parses back to it.
        #[test]
        fn cpu_forms_agree(m in 0i64..100_000_000) {
            prop_assert_eq!(cpu_millis(&format!("{m}m")), Ok(m));
            let whole = format!("{}.{:03}", m / 1000, m % 1000);
            prop_assert_eq!(cpu_millis(&whole), Ok(m));
            prop_assert_eq!(cpu_millis(&format!("{m}e-3")), Ok(m));
            prop_assert_eq!(cpu_millis(&format!("{}u", m * 1000)), Ok(m));
        }

        /// Binary and decimal suffixes multiply exactly.
        #[test]
        fn suffixes_multiply(n in 0i64..1_000_000, i in 0usize..4) {
            let (bin, dec) = [("Ki", "k"), ("Mi", "M"), ("Gi", "G"), ("Ti", "T")][i];
            let shift = 10 * (i as u32 + 1);
            prop_assert_eq!(bytes(&format!("{n}{bin}")), Ok(n << shift));
            prop_assert_eq!(bytes(&format!("{n}{dec}")), Ok(n * 1000i64.pow(i as u32 + 1)));
            prop_assert_eq!(bytes(&format!("{n}e{}", 3 * (i + 1))), Ok(n * 1000i64.pow(i as u32 + 1)));
        }

        /// Fractions round up to the next whole unit, never down.
        #[test]
        fn fractions_round_up(whole in 0i64..1_000_000, frac in 1u32..1000) {
            prop_assert_eq!(bytes(&format!("{whole}.{frac:03}")), Ok(whole + 1));
        }

        /// Nothing a cluster could send makes the parser panic.
        #[test]
        fn never_panics(s in "\\PC{0,24}", t in "[-+]?[0-9.]{0,40}([eE][-+]?[0-9]{0,5}|[KMGTPE]i?|[numk])?") {
            let _ = Quantity::parse(&s).map(|q| (q.scaled_ceil(0), q.scaled_ceil(3)));
            let _ = Quantity::parse(&t).map(|q| (q.scaled_ceil(0), q.scaled_ceil(3)));
        }
    }
}
