//! The throughput settings as the command line gives them: `--throughput MODE` and
//! `--throughput-option NAME=VALUE` (see [`elasticfs_core::metadata::throughput`]).

use anyhow::{bail, Context, Result};
use elasticfs_core::metadata::throughput::{ThroughputMode, ThroughputSettings};

use crate::options::{human_bytes, parse_size};

const MODES: &str = "elastic[:CEILING], bursting, provisioned:RATE (e.g. provisioned:200MiB), off";
/// Bytes per second: `200MiB` or `200MiB/s` (as [`options`] shows them).
fn parse_per_second(text: &str) -> Result<u64> {
    parse_size(text.strip_suffix("/s").unwrap_or(text))
}

/// A rate that must not be zero.
fn parse_rate(text: &str) -> Result<u64> {
    let rate = parse_per_second(text)?;
    if rate == 0 {
        bail!("{text:?}: a rate must be above zero");
    }
    Ok(rate)
}

/// `base` changed by a mode (if given) and `NAME=VALUE` options.
pub fn parse(mode: Option<&str>, options: &[String], base: ThroughputSettings) -> Result<ThroughputSettings> {
    let mut s = base;
    for option in options {
        let (name, value) = option
            .split_once('=')
            .with_context(|| format!("--throughput-option {option:?}: use NAME=VALUE"))?;
        let context = || format!("--throughput-option {name}");
        match name {
            "baseline-per-tib" => s.baseline_per_tib = parse_per_second(value).with_context(context)?,
            "burst-per-tib" => s.burst_per_tib = parse_per_second(value).with_context(context)?,
            "burst-floor" => s.burst_floor = parse_per_second(value).with_context(context)?,
            "metered-floor" => s.metered_floor = parse_rate(value).with_context(context)?,
            "credit-cap-per-tib" => s.credit_cap_per_tib = parse_size(value).with_context(context)?,
            "read-divisor" => {
                s.read_divisor = value.parse().ok().filter(|d| *d > 0).with_context(|| {
                    format!("--throughput-option read-divisor={value}: a whole number above zero")
                })?
            }
            "min-request" => s.min_request = parse_size(value).with_context(context)?,
            "elastic-ceiling" => {
                s.elastic_ceiling = parse_rate(value).with_context(context)?;
                // An elastic file system's ceiling is its mode's (unless a mode given with
                // it says otherwise).
                if let ThroughputMode::Elastic(_) = s.mode {
                    s.mode = ThroughputMode::Elastic(s.elastic_ceiling);
                }
            }
            other => {
                let known: Vec<&str> = settings(&base).iter().map(|(name, _)| *name).collect();
                bail!("unknown throughput option {other:?}; known: {}", known.join(", "))
            }
        }
    }
    if let Some(mode) = mode {
        let (name, arg) = match mode.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (mode, None),
        };
        s.mode = match (name, arg) {
            ("bursting", None) => ThroughputMode::Bursting,
            ("provisioned", Some(rate)) => ThroughputMode::Provisioned(parse_rate(rate)?),
            ("provisioned", None) => bail!("--throughput provisioned needs a rate: provisioned:200MiB"),
            ("elastic", None) => ThroughputMode::Elastic(s.elastic_ceiling),
            ("elastic", Some(ceiling)) => ThroughputMode::Elastic(parse_rate(ceiling)?),
            ("off", None) => ThroughputMode::Off,
            _ => bail!("unknown throughput mode {mode:?}; modes: {MODES}"),
        };
    }
    Ok(s)
}

/// Every `--throughput-option` with its value in `s`, as [`parse`] reads them back.
pub fn settings(s: &ThroughputSettings) -> [(&'static str, String); 8] {
    let rate = |r: u64| format!("{}/s", human_bytes(r));
    [
        ("baseline-per-tib", rate(s.baseline_per_tib)),
        ("burst-per-tib", rate(s.burst_per_tib)),
        ("burst-floor", rate(s.burst_floor)),
        ("metered-floor", rate(s.metered_floor)),
        ("credit-cap-per-tib", human_bytes(s.credit_cap_per_tib)),
        ("read-divisor", s.read_divisor.to_string()),
        ("min-request", human_bytes(s.min_request)),
        ("elastic-ceiling", rate(s.elastic_ceiling)),
    ]
}

/// The mode as `parse` reads it.
pub fn describe(mode: &ThroughputMode) -> String {
    match mode {
        ThroughputMode::Bursting => "bursting".into(),
        ThroughputMode::Provisioned(rate) => format!("provisioned:{}/s", human_bytes(*rate)),
        ThroughputMode::Elastic(ceiling) => format!("elastic:{}/s", human_bytes(*ceiling)),
        ThroughputMode::Off => "off".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elasticfs_core::metadata::throughput::MIB;

    #[test]
    fn modes_and_options() {
        let base = ThroughputSettings::default();
        let s = parse(Some("provisioned:20MiB"), &[], base).unwrap();
        assert_eq!(s.mode, ThroughputMode::Provisioned(20 * MIB));
        assert_eq!(parse(Some("provisioned:20MiB/s"), &[], base).unwrap(), s);
        assert_eq!(
            parse(Some("elastic"), &[], base).unwrap().mode,
            ThroughputMode::Elastic(base.elastic_ceiling)
        );
        let options = ["burst-floor=2MiB".to_string(), "credit-cap-per-tib=2.1T".to_string()];
        let s = parse(None, &options, base).unwrap();
        assert_eq!(s.burst_floor, 2 * MIB);
        assert_eq!(s.credit_cap_per_tib, (2.1 * (1u64 << 40) as f64).round() as u64);
        assert_eq!(s.mode, ThroughputMode::Elastic(base.elastic_ceiling), "the default mode");
        let s = parse(None, &["elastic-ceiling=1GiB".to_string()], base).unwrap();
        assert_eq!(s.mode, ThroughputMode::Elastic(1 << 30), "the ceiling of the elastic mode moves");
        assert_eq!(parse(Some("bursting"), &[], base).unwrap().mode, ThroughputMode::Bursting);
        for bad in ["fast", "provisioned", "provisioned:0", "off:1"] {
            assert!(parse(Some(bad), &[], base).is_err(), "{bad}");
        }
        let err = parse(None, &["speed=1".to_string()], base).unwrap_err().to_string();
        assert!(err.contains("\"speed\"") && err.contains("burst-floor"), "{err}");
        assert_eq!(describe(&ThroughputMode::Provisioned(20 * MIB)), "provisioned:20MiB/s");
    }
}
