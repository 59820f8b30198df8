//! The ranges a recipe key or a command-line flag may take, checked before any data is
//! read or any training starts: a non-finite number anywhere, an epoch count no run
//! could finish, or a learning rate that is not a positive finite number is refused with
//! the key, the value and the allowed range.

/// The most epochs any key or flag may ask for (`epochs`, `fine_tune_epochs`,
/// `head_epochs`, ...): far more than any shipped recipe uses (at most 40), far fewer
/// than would overflow a step counter.
pub const MAX_EPOCHS: u64 = 10_000;

/// The largest learning rate (Adam's steps are about `lr`; above this training only
/// diverges).
pub const MAX_LR: f64 = 10.0;

/// Whether `key` counts epochs (`epochs`, `fine_tune_epochs`, `head_epochs`, ...).
fn is_epochs(key: &str) -> bool {
    key == "epochs" || key.ends_with("_epochs")
}

/// Whether `key` is a learning rate (`lr`, `fine_tune_lr`, `head_lr`).
fn is_lr(key: &str) -> bool {
    key == "lr" || key.ends_with("_lr")
}

/// An epoch count: 0 to [`MAX_EPOCHS`]; `what` names it as the user wrote it.
pub fn check_epochs(what: &str, v: u64) -> Result<(), String> {
    if v > MAX_EPOCHS {
        return Err(format!("{what} = {v} is out of range: expected 0 to {MAX_EPOCHS} epochs"));
    }
    Ok(())
}

/// A learning rate: finite, above 0, at most [`MAX_LR`]; `what` names it.
pub fn check_lr(what: &str, v: f64) -> Result<(), String> {
    if !(v > 0.0 && v <= MAX_LR) {
        return Err(format!("{what} = {v} is out of range: expected a learning rate above 0 and at most {MAX_LR} (e.g. 0.001)"));
    }
    Ok(())
}

/// Checks every number in `v` (a recipe's TOML, or a pass's settings): floats must be
/// finite, epoch counts and learning rates in range. `at` names `v` (`[train]`,
/// `[[pass]] 2`, or empty at the top).
pub fn check_values(v: &toml::Value, at: &str, key: &str) -> Result<(), String> {
    let what = || if at.is_empty() { key.to_string() } else { format!("{at} {key}") };
    match v {
        toml::Value::Table(t) => {
            // A nested table is named by its path: `[train]`, `[model.preprocess]`,
            // `[[pass]] 1.per_layer`.
            let inner = match (at, key.is_empty()) {
                (_, true) => at.to_string(),
                ("", false) => format!("[{key}]"),
                (a, false) if a.starts_with('[') && !a.starts_with("[[") => format!("{}.{key}]", &a[..a.len() - 1]),
                (a, false) => format!("{a}.{key}"),
            };
            for (k, x) in t {
                check_values(x, &inner, k)?;
            }
        }
        toml::Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                match x {
                    // [[pass]] tables: named by their number, from 1.
                    toml::Value::Table(_) => check_values(x, &format!("[[{key}]] {}", i + 1), "")?,
                    _ => check_values(x, at, &format!("{key}[{i}]"))?,
                }
            }
        }
        toml::Value::Float(f) => {
            if !f.is_finite() {
                return Err(format!("{} = {f} is not a number squeeze can use: expected a finite number", what()));
            }
            check_named(&what(), key, *f)?;
        }
        toml::Value::Integer(i) => check_named(&what(), key, *i as f64)?,
        _ => {}
    }
    Ok(())
}

fn check_named(what: &str, key: &str, v: f64) -> Result<(), String> {
    if is_epochs(key) {
        if v < 0.0 || v.fract() != 0.0 {
            return Err(format!("{what} = {v} is out of range: expected 0 to {MAX_EPOCHS} epochs"));
        }
        return check_epochs(what, v as u64);
    }
    if is_lr(key) {
        return check_lr(what, v);
    }
    Ok(())
}

/// A command-line epoch count (clap value parser): 0 to [`MAX_EPOCHS`].
pub fn epochs_arg(s: &str) -> Result<usize, String> {
    let v: u64 = s.parse().map_err(|_| format!("expected a whole number of epochs from 0 to {MAX_EPOCHS}"))?;
    if v > MAX_EPOCHS {
        return Err(format!("{v} is out of range: expected 0 to {MAX_EPOCHS} epochs"));
    }
    Ok(v as usize)
}

/// A command-line learning rate (clap value parser): finite, above 0, at most [`MAX_LR`].
pub fn lr_arg(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("expected a number above 0 and at most {MAX_LR}"))?;
    if !(v > 0.0 && f64::from(v) <= MAX_LR) {
        return Err(format!("{v} is out of range: expected a learning rate above 0 and at most {MAX_LR} (e.g. 0.001)"));
    }
    Ok(v)
}

/// A command-line number that must be finite (clap value parser).
pub fn finite_arg(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| "expected a number".to_string())?;
    if !v.is_finite() {
        return Err(format!("{v} is not a number squeeze can use: expected a finite number"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<(), String> {
        let t: toml::Table = toml::from_str(text).unwrap();
        check_values(&toml::Value::Table(t), "", "")
    }

    #[test]
    fn numbers_are_named_with_their_key_value_and_range() {
        assert!(check("name = \"x\"\n[train]\nepochs = 10\nlr = 0.001\n[[pass]]\nfine_tune_epochs = 3\n").is_ok());
        let e = check("[train]\nepochs = 1000000000\n").unwrap_err();
        assert!(e.contains("[train] epochs = 1000000000") && e.contains("0 to 10000"), "{e}");
        let e = check("[train]\nlr = nan\n").unwrap_err();
        assert!(e.contains("[train] lr = NaN") && e.contains("finite"), "{e}");
        let e = check("[train]\nlr = inf\n").unwrap_err();
        assert!(e.contains("[train] lr = inf"), "{e}");
        let e = check("[train]\nlr = 0.0\n").unwrap_err();
        assert!(e.contains("[train] lr = 0") && e.contains("above 0"), "{e}");
        let e = check("[gate]\nmax_accuracy_drop = nan\n").unwrap_err();
        assert!(e.contains("[gate] max_accuracy_drop = NaN") && e.contains("finite"), "{e}");
        let e = check("[[pass]]\ntype = \"prune\"\n[[pass]]\nfine_tune_epochs = 1000000000\n").unwrap_err();
        assert!(e.contains("[[pass]] 2 fine_tune_epochs = 1000000000"), "{e}");
        let e = check("[[pass]]\nhead_lr = -1.0\n").unwrap_err();
        assert!(e.contains("[[pass]] 1 head_lr = -1"), "{e}");
        let e = check("[[pass]]\n[pass.per_layer]\nfc1 = nan\n").unwrap_err();
        assert!(e.contains("[[pass]] 1.per_layer fc1 = NaN"), "{e}");
        assert!(epochs_arg("18446744073709551615").unwrap_err().contains("0 to 10000"));
        assert_eq!(epochs_arg("3"), Ok(3));
        assert!(lr_arg("nan").unwrap_err().contains("above 0"));
        assert!(lr_arg("inf").is_err() && lr_arg("0").is_err() && lr_arg("0.01").is_ok());
        assert!(finite_arg("nan").is_err() && finite_arg("0.5").is_ok());
    }
}
