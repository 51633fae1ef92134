//! The throughput settings as the command line gives them: `--throughput MODE` and
//! `--throughput-option NAME=VALUE` (see [`elasticfs_core::metadata::throughput`]).

use anyhow::{bail, Context, Result};
use elasticfs_core::metadata::throughput::{ThroughputMode, ThroughputSettings};

use crate::options::parse_size;

const MODES: &str = "bursting, provisioned:RATE (e.g. provisioned:200MiB), elastic[:CEILING], off";
const OPTIONS: &str = "baseline-per-tib, burst-per-tib, burst-floor, metered-floor, credit-cap-per-tib, \
    read-divisor, min-request, elastic-ceiling";

/// A rate: a size per second (`200MiB`, `200MiB/s`).
fn parse_rate(text: &str) -> Result<u64> {
    let rate = parse_size(text.strip_suffix("/s").unwrap_or(text))?;
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
            "baseline-per-tib" => s.baseline_per_tib = parse_size(value).with_context(context)?,
            "burst-per-tib" => s.burst_per_tib = parse_size(value).with_context(context)?,
            "burst-floor" => s.burst_floor = parse_size(value).with_context(context)?,
            "metered-floor" => s.metered_floor = parse_rate(value).with_context(context)?,
            "credit-cap-per-tib" => s.credit_cap_per_tib = parse_size(value).with_context(context)?,
            "read-divisor" => {
                s.read_divisor = value.parse().ok().filter(|d| *d > 0).with_context(|| {
                    format!("--throughput-option read-divisor={value}: a whole number above zero")
                })?
            }
            "min-request" => s.min_request = parse_size(value).with_context(context)?,
            "elastic-ceiling" => s.elastic_ceiling = parse_rate(value).with_context(context)?,
            other => bail!("unknown throughput option {other:?}; known: {OPTIONS}"),
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

/// The mode as `parse` reads it.
pub fn describe(mode: &ThroughputMode) -> String {
    match mode {
        ThroughputMode::Bursting => "bursting".into(),
        ThroughputMode::Provisioned(rate) => format!("provisioned:{}/s", human_bytes(*rate)),
        ThroughputMode::Elastic(ceiling) => format!("elastic:{}/s", human_bytes(*ceiling)),
        ThroughputMode::Off => "off".into(),
    }
}

/// `1.5 GiB`, `200 MiB`, `512 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.2}{}", UNITS[unit])
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
        assert_eq!(s.mode, ThroughputMode::Bursting);
        for bad in ["fast", "provisioned", "provisioned:0", "off:1"] {
            assert!(parse(Some(bad), &[], base).is_err(), "{bad}");
        }
        let err = parse(None, &["speed=1".to_string()], base).unwrap_err().to_string();
        assert!(err.contains("\"speed\"") && err.contains("burst-floor"), "{err}");
        assert_eq!(describe(&ThroughputMode::Provisioned(20 * MIB)), "provisioned:20MiB/s");
    }
}
