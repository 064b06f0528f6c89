//! Small checks shared by the message types.

use crate::error::ProtoError;

/// A string of at most `max` bytes.
pub fn check_len(field: &'static str, s: &str, max: usize) -> Result<(), ProtoError> {
    if s.len() > max {
        return Err(ProtoError::invalid(
            field,
            format!("longer than {max} bytes"),
        ));
    }
    Ok(())
}

/// A finite, non-negative number (rates, temperatures, power: NaN or negatives are garbage).
pub fn check_number(field: &'static str, v: f64) -> Result<(), ProtoError> {
    if !v.is_finite() || v < 0.0 {
        return Err(ProtoError::invalid(
            field,
            "must be a finite non-negative number",
        ));
    }
    Ok(())
}

/// As [`check_number`], for optional sensor values.
pub fn check_opt_number(field: &'static str, v: Option<f32>) -> Result<(), ProtoError> {
    match v {
        Some(v) => check_number(field, f64::from(v)),
        None => Ok(()),
    }
}

/// A list of at most `max` entries.
pub fn check_count<T>(field: &'static str, list: &[T], max: usize) -> Result<(), ProtoError> {
    if list.len() > max {
        return Err(ProtoError::invalid(
            field,
            format!("more than {max} entries"),
        ));
    }
    Ok(())
}
