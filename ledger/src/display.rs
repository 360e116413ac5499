//! Numbers as people read them, for every text view (the CLI, `ledger ablate`'s table, the web
//! interface). `--json` keeps full precision.

/// A metric value: integers without a fraction, others to 4 significant digits, very small or
/// very large ones in scientific notation (`0.6667`, `4.767`, `1.234e-4`).
pub fn metric(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e6) {
        format!("{v:.3e}")
    } else {
        let digits = (4 - (v.abs().log10().floor() as i32 + 1)).clamp(0, 6) as usize;
        format!("{v:.digits$}")
    }
}

#[cfg(test)]
mod tests {
    use super::metric;

    #[test]
    fn metrics_read_well() {
        assert_eq!(metric(3.0), "3");
        assert_eq!(metric(-2.0), "-2");
        assert_eq!(metric(0.12345), "0.1235");
        assert_eq!(metric(12.3456), "12.35");
        assert_eq!(metric(0.6666666666666666), "0.6667");
        assert_eq!(metric(4.76733845293176), "4.767");
        assert_eq!(metric(0.0001234), "1.234e-4");
        assert_eq!(metric(12345678.9), "1.235e7");
        assert_eq!(metric(f64::NAN), "NaN");
    }
}
