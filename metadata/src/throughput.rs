//! Throughput as Amazon EFS meters and limits it (DESIGN §7), for the whole file system.
//!
//! [`Governor`] is the token bucket every client of a file system draws from. It lives with
//! the metadata store (the embedded engine, or the metadata service that every client shares);
//! clients lease tokens in batches ([`MetaStore::lease_throughput`](crate::MetaStore)) and
//! throttle locally. It is a pure model over a clock the caller passes in, so that a test can
//! run days of simulated time in milliseconds.
//!
//! - **bursting**: baseline = `baseline_per_tib` × stored TiB; burst = `burst_per_tib` × stored
//!   TiB, at least `burst_floor`. Credits (bytes) are earned at the baseline rate and spent by
//!   metered I/O, capped at `credit_cap_per_tib` × stored TiB (at least one TiB's worth). With
//!   credits left the permitted rate is the burst rate, else the baseline (at least
//!   `metered_floor`).
//! - **provisioned**: the provisioned rate, or the baseline if that is higher.
//! - **elastic**: no credits, only a ceiling.
//! - **off**: no limit and no metering round trips (a self-hosted choice EFS does not have).

use serde::{Deserialize, Serialize};

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
pub const TIB: u64 = 1 << 40;

const DEFAULT_ELASTIC_CEILING: u64 = 10 * GIB;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ThroughputMode {
    Bursting,
    /// Bytes per second.
    Provisioned(u64),
    /// The most bytes per second the file system may use.
    Elastic(u64),
    Off,
}

/// A file system's throughput settings: the mode and every rate of the model, so that a test
/// or a demonstration can use small numbers. Defaults are EFS's: the mode is elastic, the one
/// EFS gives a file system created in its console and recommends for most workloads (bursting
/// holds a new, small file system to 100 MiB/s of writes, 300 MiB/s of reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ThroughputSettings {
    pub mode: ThroughputMode,
    /// Bytes per second of baseline per TiB stored.
    pub baseline_per_tib: u64,
    /// Bytes per second of burst per TiB stored.
    pub burst_per_tib: u64,
    /// The burst rate of a small file system.
    pub burst_floor: u64,
    /// Throughput a file system without credits may always use.
    pub metered_floor: u64,
    /// Bytes of credit a file system may hold per TiB stored (and at least this much).
    pub credit_cap_per_tib: u64,
    /// A read counts as its bytes divided by this.
    pub read_divisor: u64,
    /// Every data or metadata request counts as at least this many bytes.
    pub min_request: u64,
    /// The default ceiling of elastic mode.
    pub elastic_ceiling: u64,
}

impl Default for ThroughputSettings {
    fn default() -> Self {
        ThroughputSettings {
            mode: ThroughputMode::Elastic(DEFAULT_ELASTIC_CEILING),
            baseline_per_tib: 50 * MIB,
            burst_per_tib: 100 * MIB,
            burst_floor: 100 * MIB,
            metered_floor: MIB,
            credit_cap_per_tib: TIB * 21 / 10,
            read_divisor: 3,
            min_request: 4 * KIB,
            elastic_ceiling: DEFAULT_ELASTIC_CEILING,
        }
    }
}

/// What one request is, for metering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    Read,
    Write,
    Metadata,
}

impl ThroughputSettings {
    /// The bytes a request of `len` bytes counts as.
    pub fn metered(&self, kind: IoKind, len: u64) -> u64 {
        let counted = match kind {
            IoKind::Read => len.div_ceil(self.read_divisor.max(1)),
            IoKind::Write => len,
            IoKind::Metadata => 0,
        };
        counted.max(self.min_request)
    }

    fn per_tib(rate: u64, stored: u64) -> f64 {
        rate as f64 * stored as f64 / TIB as f64
    }

    /// Bytes per second earned by a file system storing `stored` bytes.
    pub fn baseline(&self, stored: u64) -> f64 {
        Self::per_tib(self.baseline_per_tib, stored)
    }

    pub fn burst(&self, stored: u64) -> f64 {
        Self::per_tib(self.burst_per_tib, stored).max(self.burst_floor as f64)
    }

    pub fn credit_cap(&self, stored: u64) -> f64 {
        Self::per_tib(self.credit_cap_per_tib, stored).max(self.credit_cap_per_tib as f64)
    }
}

/// I/O a client did since its previous lease, in bytes (metering as EFS publishes it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoReport {
    pub data_read: u64,
    pub data_write: u64,
    pub metadata: u64,
    pub metered: u64,
}

impl IoReport {
    pub fn add(&mut self, other: &IoReport) {
        self.data_read += other.data_read;
        self.data_write += other.data_write;
        self.metadata += other.metadata;
        self.metered += other.metered;
    }

    pub fn total(&self) -> u64 {
        self.data_read + self.data_write + self.metadata
    }
}

/// A client's request for tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// Metered bytes the client needs before it may go on (0: only report the I/O).
    pub need: u64,
    pub report: IoReport,
}

/// The answer to a [`LeaseRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Lease {
    /// Use these many metered bytes (at least what was needed) within `valid_ms`.
    Granted { bytes: u64, valid_ms: u64 },
    /// Nothing to spare: ask again after this long.
    Wait { retry_ms: u64 },
    /// No limit for now: ask again after `valid_ms` (the mode may change).
    Unlimited { valid_ms: u64 },
}

/// The figures EFS publishes for a file system (CloudWatch's names in the comments).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ThroughputStatus {
    pub settings: ThroughputSettings,
    /// `StorageBytes`, as last measured.
    pub stored_bytes: u64,
    /// `BurstCreditBalance`, bytes.
    pub burst_credit_balance: u64,
    /// `PermittedThroughput`, bytes per second (0 in `off` mode).
    pub permitted_throughput: u64,
    /// `MeteredIOBytes`, `TotalIOBytes`, `DataReadIOBytes`, `DataWriteIOBytes`,
    /// `MetadataIOBytes`, as clients reported them since the store was opened.
    pub io: IoReport,
}

/// How long a lease's tokens may be used: unused ones then lapse, so that a client that went
/// idle does not hold a share of the rate.
pub const LEASE_VALID_MS: u64 = 1000;
/// A lease is sized to this much of the permitted rate: small enough that clients share it
/// fairly, large enough that a client asks a few times a second at most.
const LEASE_SECS: f64 = 0.05;
/// The bucket holds at most this much of the permitted rate: the short bursts it allows.
const BUCKET_SECS: f64 = 0.1;

/// The token bucket of one file system.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Governor {
    settings: ThroughputSettings,
    stored: u64,
    /// Burst credits, bytes.
    credits: f64,
    /// Tokens in the bucket, bytes; negative while a grant larger than the bucket is paid off.
    tokens: f64,
    /// Clock reading of the last update, seconds.
    now: f64,
    io: IoReport,
}

impl Governor {
    /// A governor at time `now` (seconds on the caller's clock) with `credits` bytes of burst
    /// credit (`None`: a new file system's full balance).
    pub fn new(settings: ThroughputSettings, stored: u64, credits: Option<f64>, now: f64) -> Self {
        let cap = settings.credit_cap(stored);
        let credits = credits.unwrap_or(cap).clamp(0.0, cap);
        let mut governor = Governor { settings, stored, credits, tokens: 0.0, now, io: IoReport::default() };
        governor.tokens = governor.bucket_size();
        governor
    }

    pub fn settings(&self) -> &ThroughputSettings {
        &self.settings
    }

    pub fn set_settings(&mut self, settings: ThroughputSettings, now: f64) {
        self.advance(now);
        self.settings = settings;
        self.credits = self.credits.min(settings.credit_cap(self.stored));
        self.tokens = self.tokens.min(self.bucket_size());
    }

    /// Takes a new measurement of the bytes stored.
    pub fn set_stored(&mut self, stored: u64, now: f64) {
        self.advance(now);
        self.stored = stored;
        self.credits = self.credits.min(self.settings.credit_cap(stored));
    }

    pub fn credits(&self) -> f64 {
        self.credits
    }

    /// Bytes per second the file system may use now (infinite in `off` mode).
    pub fn permitted(&self) -> f64 {
        let s = &self.settings;
        let baseline = s.baseline(self.stored).max(s.metered_floor as f64);
        match s.mode {
            ThroughputMode::Bursting if self.credits > 0.0 => s.burst(self.stored),
            ThroughputMode::Bursting => baseline,
            ThroughputMode::Provisioned(rate) => (rate as f64).max(baseline),
            ThroughputMode::Elastic(ceiling) => ceiling as f64,
            ThroughputMode::Off => f64::INFINITY,
        }
    }

    fn bucket_size(&self) -> f64 {
        let permitted = self.permitted();
        if permitted.is_finite() {
            (permitted * BUCKET_SECS).max(self.settings.min_request as f64)
        } else {
            0.0
        }
    }

    /// Moves the clock to `now`: credits are earned at the baseline rate and the bucket fills
    /// at the permitted rate.
    fn advance(&mut self, now: f64) {
        let elapsed = (now - self.now).max(0.0);
        self.now = self.now.max(now);
        if elapsed == 0.0 {
            return;
        }
        // The rate of the interval is the one in force at its start: credits earned during it
        // do not lift a file system that ran out back to its burst rate retroactively.
        let permitted = self.permitted();
        if permitted.is_finite() {
            self.tokens = (self.tokens + permitted * elapsed).min(self.bucket_size());
        }
        let cap = self.settings.credit_cap(self.stored);
        self.credits = (self.credits + self.settings.baseline(self.stored) * elapsed).min(cap);
    }

    /// Answers a client's lease request at time `now`.
    pub fn lease(&mut self, request: &LeaseRequest, now: f64) -> Lease {
        self.advance(now);
        self.io.add(&request.report);
        let permitted = self.permitted();
        if !permitted.is_finite() {
            return Lease::Unlimited { valid_ms: LEASE_VALID_MS };
        }
        if request.need == 0 {
            return Lease::Granted { bytes: 0, valid_ms: LEASE_VALID_MS };
        }
        if self.tokens <= 0.0 {
            let retry = (-self.tokens / permitted).max(0.001);
            return Lease::Wait { retry_ms: (retry * 1000.0).ceil() as u64 };
        }
        // A grant may exceed the tokens at hand (one large request); the debt is paid off
        // before anyone is granted more, so the long-run rate holds.
        let batch = (permitted * LEASE_SECS).min(self.tokens).max(self.settings.min_request as f64);
        let bytes = (request.need as f64).max(batch);
        self.tokens -= bytes;
        self.spend(bytes);
        Lease::Granted { bytes: bytes as u64, valid_ms: LEASE_VALID_MS }
    }

    /// Metered use spends credits (bursting and provisioned modes keep the balance, as EFS
    /// does, so that a switch back to bursting starts from it).
    fn spend(&mut self, bytes: f64) {
        if self.settings.mode == ThroughputMode::Bursting {
            self.credits = (self.credits - bytes).max(0.0);
        }
    }

    /// Metered I/O at time `now` without the bucket: what a client that uses exactly what it
    /// is permitted looks like to the credit balance (for the simulations below).
    #[cfg(test)]
    fn simulate_use(&mut self, bytes: f64, now: f64) {
        self.advance(now);
        self.spend(bytes);
    }

    pub fn status(&self, now: f64) -> ThroughputStatus {
        let mut view = self.clone();
        view.advance(now);
        let permitted = view.permitted();
        ThroughputStatus {
            settings: view.settings,
            stored_bytes: view.stored,
            burst_credit_balance: view.credits as u64,
            permitted_throughput: if permitted.is_finite() { permitted as u64 } else { 0 },
            io: view.io,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: f64 = 86_400.0;

    fn bursting() -> ThroughputSettings {
        ThroughputSettings { mode: ThroughputMode::Bursting, ..ThroughputSettings::default() }
    }

    /// Runs a file system under a demand of `demand(t)` bytes per second for `secs`, in steps
    /// of `step` seconds, always using what it is permitted up to the demand. Returns the
    /// seconds it ran at (or above) the burst rate.
    fn run(g: &mut Governor, start: f64, secs: f64, step: f64, demand: impl Fn(f64) -> f64) -> f64 {
        let mut bursting = 0.0;
        let mut t = start;
        while t < start + secs {
            let burst = g.settings().burst(g.stored);
            let rate = demand(t).min(g.permitted());
            if rate >= burst * 0.999 && rate > 0.0 {
                bursting += step;
            }
            t += step;
            g.simulate_use(rate * step, t);
        }
        bursting
    }

    /// The burst minutes a day a file system of `stored` bytes can sustain: a day that starts
    /// with no credits, idles, then bursts at full demand until the day ends, is sustainable
    /// when the burst lasts to the end of the day. Found by bisection on the idle time.
    fn burst_minutes_a_day(stored: u64) -> f64 {
        let (mut lo, mut hi) = (0.0, DAY);
        for _ in 0..40 {
            let idle = (lo + hi) / 2.0;
            let mut g = Governor::new(bursting(), stored, Some(0.0), 0.0);
            run(&mut g, 0.0, idle, idle, |_| 0.0);
            let burst_secs = run(&mut g, idle, DAY - idle, 1.0, |_| f64::INFINITY);
            if burst_secs >= DAY - idle - 1.0 {
                hi = idle;
            } else {
                lo = idle;
            }
        }
        (DAY - hi) / 60.0
    }

    fn within(actual: f64, expected: f64, tolerance: f64) -> bool {
        (actual - expected).abs() <= expected * tolerance
    }

    #[test]
    fn reproduces_the_published_bursting_table() {
        // stored, baseline MiB/s, burst MiB/s, burst minutes a day (EFS's table). EFS prints
        // 0.5 MiB/s and 7.2 minutes for 10 GiB, rounding up the 500 KiB/s (0.488 MiB/s) that
        // its own rule of 50 KiB/s per GiB gives; the row holds that rule's exact figures (and
        // is within 2.5% of the printed ones).
        let table = [
            (10 * GIB, 0.48828125, 100.0, 0.48828125 * DAY / 100.0 / 60.0),
            (256 * GIB, 12.5, 100.0, 180.0),
            (TIB, 50.0, 100.0, 720.0),
            (4 * TIB, 200.0, 400.0, 720.0),
        ];
        for (stored, baseline, burst, minutes) in table {
            let s = bursting();
            assert!(within(s.baseline(stored) / MIB as f64, baseline, 0.01), "baseline of {stored}");
            assert!(within(s.burst(stored) / MIB as f64, burst, 0.01), "burst of {stored}");
            let simulated = burst_minutes_a_day(stored);
            assert!(
                within(simulated, minutes, 0.01),
                "{stored} bytes: {simulated:.1} min a day, table says {minutes}"
            );
        }
        assert!(within(burst_minutes_a_day(10 * GIB), 7.2, 0.025), "EFS's printed 10 GiB row");
        // Without credits a small file system still gets the metered floor.
        let empty = Governor::new(bursting(), 10 * GIB, Some(0.0), 0.0);
        assert_eq!(empty.permitted(), MIB as f64);
    }

    #[test]
    fn a_new_file_system_bursts_until_its_credits_are_spent() {
        for (stored, hours, after) in [(TIB, 12.2, 50.0 * MIB as f64), (10 * GIB, 6.1, MIB as f64)] {
            let mut g = Governor::new(bursting(), stored, None, 0.0);
            assert!(within(g.credits(), 2.1 * TIB as f64, 1e-9));
            let burst_secs = run(&mut g, 0.0, DAY, 1.0, |_| f64::INFINITY);
            assert!(within(burst_secs / 3600.0, hours, 0.01), "{stored}: burst {:.2} h", burst_secs / 3600.0);
            assert_eq!(g.permitted(), after, "{stored} after its credits");
        }
    }

    #[test]
    fn idle_file_systems_earn_credits_at_the_baseline_up_to_the_cap() {
        let mut g = Governor::new(bursting(), TIB, Some(0.0), 0.0);
        run(&mut g, 0.0, 3600.0, 60.0, |_| 0.0);
        assert!(within(g.credits(), 50.0 * MIB as f64 * 3600.0, 1e-9));
        run(&mut g, 3600.0, 3.0 * DAY, 60.0, |_| 0.0);
        assert!(within(g.credits(), 2.1 * TIB as f64, 1e-9));
        // Above 1 TiB the cap grows with the size.
        let mut big = Governor::new(bursting(), 4 * TIB, Some(0.0), 0.0);
        run(&mut big, 0.0, 3.0 * DAY, 60.0, |_| 0.0);
        assert!(within(big.credits(), 4.0 * 2.1 * TIB as f64, 1e-9));
    }

    #[test]
    fn metering_counts_reads_at_a_third_and_small_requests_as_4k() {
        let s = bursting();
        assert_eq!(s.metered(IoKind::Write, 3 * MIB), 3 * MIB);
        assert_eq!(s.metered(IoKind::Read, 3 * MIB), MIB);
        assert_eq!(s.metered(IoKind::Read, 100), 4 * KIB);
        assert_eq!(s.metered(IoKind::Write, 1), 4 * KIB);
        assert_eq!(s.metered(IoKind::Metadata, 0), 4 * KIB);
    }

    /// Leases taken as fast as they are granted: the bytes granted over `secs`.
    fn drain(g: &mut Governor, secs: f64, need: u64) -> f64 {
        let (mut t, mut granted) = (0.0, 0.0);
        while t < secs {
            match g.lease(&LeaseRequest { need, report: IoReport::default() }, t) {
                Lease::Granted { bytes, .. } => granted += bytes as f64,
                Lease::Wait { retry_ms } => t += retry_ms as f64 / 1000.0,
                Lease::Unlimited { .. } => return f64::INFINITY,
            }
        }
        granted
    }

    #[test]
    fn leases_hold_the_permitted_rate() {
        let provisioned = ThroughputSettings { mode: ThroughputMode::Provisioned(20 * MIB), ..bursting() };
        for need in [4 * KIB, MIB, 8 * MIB] {
            let mut g = Governor::new(provisioned, GIB, None, 0.0);
            let rate = drain(&mut g, 100.0, need) / 100.0;
            assert!(within(rate, 20.0 * MIB as f64, 0.02), "need {need}: {:.1} MiB/s", rate / MIB as f64);
        }
        // A provisioned rate below the baseline gives the baseline.
        let low = ThroughputSettings { mode: ThroughputMode::Provisioned(MIB), ..bursting() };
        assert_eq!(Governor::new(low, 2 * TIB, None, 0.0).permitted(), 100.0 * MIB as f64);
        let elastic = ThroughputSettings { mode: ThroughputMode::Elastic(300 * MIB), ..bursting() };
        let mut g = Governor::new(elastic, GIB, Some(0.0), 0.0);
        assert!(within(drain(&mut g, 10.0, MIB) / 10.0, 300.0 * MIB as f64, 0.02));
        let off = ThroughputSettings { mode: ThroughputMode::Off, ..bursting() };
        assert_eq!(drain(&mut Governor::new(off, GIB, None, 0.0), 1.0, MIB), f64::INFINITY);
    }

    #[test]
    fn clients_report_their_io() {
        let mut g = Governor::new(bursting(), GIB, None, 0.0);
        let report = IoReport { data_read: 10, data_write: 20, metadata: 4096, metered: 5000 };
        g.lease(&LeaseRequest { need: 1, report }, 1.0);
        g.lease(&LeaseRequest { need: 1, report }, 2.0);
        let status = g.status(2.0);
        assert_eq!(status.io.data_write, 40);
        assert_eq!(status.io.total(), 2 * (10 + 20 + 4096));
        assert_eq!(status.permitted_throughput, 100 * MIB);
    }
}
