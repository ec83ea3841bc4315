//! A test tool: a model of a bad network (lobby Wi-Fi) for one direction
//! of the relay. Each packet is lost at random or in Gilbert–Elliott
//! bursts, delayed by a base delay plus normally distributed jitter (so
//! packets overtake each other), duplicated, and queued behind a bandwidth
//! cap; all from a seed, so a failing test can be replayed.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Bursty loss: a two-state chain whose bad state loses every packet and
/// whose good state loses none (the Gilbert model, the usual special case
/// of Gilbert–Elliott).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bursts {
    /// Chance per packet of falling from the good state into a burst.
    pub enter: f64,
    /// Chance per packet of leaving a burst: bursts last `1 / leave`
    /// packets on average.
    pub leave: f64,
}

impl Bursts {
    /// Bursts of `mean_burst` packets on average (at least 1) losing
    /// `loss` of all packets overall (0 to 1).
    pub fn with_loss(loss: f64, mean_burst: f64) -> Self {
        let loss = loss.clamp(0.0, 0.99);
        let leave = 1.0 / mean_burst.max(1.0);
        // Time in the bad state is enter / (enter + leave) = loss.
        Self {
            enter: (loss * leave / (1.0 - loss)).min(1.0),
            leave,
        }
    }
}

/// What one direction of the network does to packets. The default is a
/// perfect network.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NetworkProfile {
    /// Chance of losing each packet at random (0 to 1), besides bursts.
    pub loss: f64,
    /// Bursty loss, on top of `loss`.
    pub bursts: Option<Bursts>,
    /// Mean one-way delay.
    pub delay: Duration,
    /// Standard deviation of the delay (normal, cut at zero delay): with
    /// a packet every 20 ms, anything over ~10 ms reorders some.
    pub jitter: Duration,
    /// Chance of delivering a packet twice (0 to 1); the copy has a delay
    /// of its own.
    pub duplicate: f64,
    /// Link rate: packets queue behind each other at this many bits per
    /// second; `None` is unlimited.
    pub bandwidth_bps: Option<u64>,
    /// Packets that would wait longer than this behind the bandwidth cap
    /// are dropped (a router's tail drop).
    pub max_queue: Duration,
    /// Seed of the random choices.
    pub seed: u64,
}

impl Default for NetworkProfile {
    fn default() -> Self {
        Self {
            loss: 0.0,
            bursts: None,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            duplicate: 0.0,
            bandwidth_bps: None,
            max_queue: Duration::from_millis(500),
            seed: 1,
        }
    }
}

impl NetworkProfile {
    /// Whether packets go through untouched.
    pub fn is_perfect(&self) -> bool {
        self.loss == 0.0
            && self.bursts.is_none()
            && self.delay.is_zero()
            && self.jitter.is_zero()
            && self.duplicate == 0.0
            && self.bandwidth_bps.is_none()
    }
}

/// What the network did to the packets offered to it, as it counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkCounts {
    /// Packets offered.
    pub offered: u64,
    /// Packets lost (random, burst or tail drop).
    pub lost: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Packets delivered after a packet offered later than them.
    pub reordered: u64,
    /// Longest run of packets lost in a row.
    pub longest_burst: u64,
    /// Runs of lost packets, for the mean burst length.
    pub bursts: u64,
}

impl NetworkCounts {
    /// Share of the offered packets lost (0 to 1).
    pub fn loss_rate(&self) -> f64 {
        if self.offered == 0 {
            0.0
        } else {
            self.lost as f64 / self.offered as f64
        }
    }

    /// Mean length of a run of lost packets.
    pub fn mean_burst(&self) -> f64 {
        if self.bursts == 0 {
            0.0
        } else {
            self.lost as f64 / self.bursts as f64
        }
    }
}

/// When to deliver one offered packet: not at all, once, or twice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deliveries {
    /// First delivery.
    pub first: Option<Instant>,
    /// The duplicate's delivery.
    pub copy: Option<Instant>,
}

/// One direction of a simulated network.
pub struct NetworkModel {
    profile: NetworkProfile,
    rng: StdRng,
    in_burst: bool,
    /// Whether the previous packet was lost (to count runs).
    lost_previous: bool,
    run: u64,
    /// When the bandwidth-capped link finishes sending what it holds.
    link_free_at: Option<Instant>,
    /// Latest delivery time handed out so far, to count reordering.
    latest_delivery: Option<Instant>,
    counts: NetworkCounts,
}

impl NetworkModel {
    /// A network behaving as `profile`.
    pub fn new(profile: NetworkProfile) -> Self {
        Self {
            rng: StdRng::seed_from_u64(profile.seed),
            profile,
            in_burst: false,
            lost_previous: false,
            run: 0,
            link_free_at: None,
            latest_delivery: None,
            counts: NetworkCounts::default(),
        }
    }

    /// What happened so far.
    pub fn counts(&self) -> NetworkCounts {
        self.counts
    }

    /// Decides the fate of a packet of `len` bytes offered at `now`.
    pub fn offer(&mut self, now: Instant, len: usize) -> Deliveries {
        self.counts.offered += 1;
        let lost = self.lose();
        let sent = if lost { None } else { self.queue(now, len) };
        let Some(sent) = sent else {
            self.count_loss();
            return Deliveries::default();
        };
        self.lost_previous = false;
        self.run = 0;
        let first = sent + self.delay();
        let copy = (self.rng.random::<f64>() < self.profile.duplicate).then(|| {
            self.counts.duplicated += 1;
            sent + self.delay()
        });
        if self.latest_delivery.is_some_and(|latest| first < latest) {
            self.counts.reordered += 1;
        }
        self.latest_delivery = self.latest_delivery.max(Some(first)).max(copy);
        Deliveries {
            first: Some(first),
            copy,
        }
    }

    fn lose(&mut self) -> bool {
        let burst = match self.profile.bursts {
            Some(b) => {
                let flip = if self.in_burst { b.leave } else { b.enter };
                if self.rng.random::<f64>() < flip {
                    self.in_burst = !self.in_burst;
                }
                self.in_burst
            }
            None => false,
        };
        // Draw for random loss whatever the state, so the sequence of
        // random numbers does not depend on the bursts.
        let random = self.rng.random::<f64>() < self.profile.loss;
        burst || random
    }

    /// When the packet has gone onto the wire behind the bandwidth cap;
    /// `None` when the queue is too long and it is dropped.
    fn queue(&mut self, now: Instant, len: usize) -> Option<Instant> {
        let Some(bps) = self.profile.bandwidth_bps else {
            return Some(now);
        };
        let start = self.link_free_at.map_or(now, |free| free.max(now));
        if start - now > self.profile.max_queue {
            return None;
        }
        let on_wire = Duration::from_secs_f64(len as f64 * 8.0 / bps.max(1) as f64);
        self.link_free_at = Some(start + on_wire);
        Some(start + on_wire)
    }

    fn count_loss(&mut self) {
        self.counts.lost += 1;
        if !self.lost_previous {
            self.counts.bursts += 1;
        }
        self.lost_previous = true;
        self.run += 1;
        self.counts.longest_burst = self.counts.longest_burst.max(self.run);
    }

    /// Base delay plus normal jitter, never negative.
    fn delay(&mut self) -> Duration {
        let mean = self.profile.delay.as_secs_f64();
        let sd = self.profile.jitter.as_secs_f64();
        if sd == 0.0 {
            return self.profile.delay;
        }
        // Box–Muller: one standard normal from two uniforms.
        let u1 = self.rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2 = self.rng.random::<f64>();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        Duration::from_secs_f64((mean + sd * z).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(profile: NetworkProfile, packets: usize) -> (NetworkModel, Vec<Deliveries>) {
        let mut model = NetworkModel::new(profile);
        let start = Instant::now();
        let out = (0..packets)
            .map(|i| model.offer(start + Duration::from_millis(20 * i as u64), 160))
            .collect();
        (model, out)
    }

    #[test]
    fn a_perfect_network_delivers_everything_at_once_in_order() {
        let profile = NetworkProfile::default();
        assert!(profile.is_perfect());
        let (model, out) = run(profile, 1000);
        assert_eq!(model.counts().lost, 0);
        assert_eq!(model.counts().reordered, 0);
        assert!(out.iter().all(|d| d.first.is_some() && d.copy.is_none()));
    }

    #[test]
    fn random_loss_is_close_to_its_rate_and_mostly_single_packets() {
        let profile = NetworkProfile {
            loss: 0.05,
            seed: 7,
            ..NetworkProfile::default()
        };
        let (model, _) = run(profile, 20_000);
        let c = model.counts();
        assert!((c.loss_rate() - 0.05).abs() < 0.006, "{c:?}");
        assert!(c.mean_burst() < 1.1, "{c:?}");
    }

    #[test]
    fn bursts_have_the_set_mean_length_and_overall_loss() {
        let profile = NetworkProfile {
            bursts: Some(Bursts::with_loss(0.05, 3.0)),
            seed: 11,
            ..NetworkProfile::default()
        };
        let (model, _) = run(profile, 50_000);
        let c = model.counts();
        assert!((c.loss_rate() - 0.05).abs() < 0.008, "{c:?}");
        assert!((c.mean_burst() - 3.0).abs() < 0.4, "{c:?}");
    }

    #[test]
    fn jitter_spreads_delays_normally_and_reorders_packets() {
        let profile = NetworkProfile {
            delay: Duration::from_millis(40),
            jitter: Duration::from_millis(20),
            seed: 3,
            ..NetworkProfile::default()
        };
        let mut model = NetworkModel::new(profile);
        let start = Instant::now();
        let delays: Vec<f64> = (0..10_000)
            .map(|i| {
                let at = start + Duration::from_millis(20 * i);
                let d = model.offer(at, 160).first.unwrap() - at;
                d.as_secs_f64() * 1000.0
            })
            .collect();
        let mean = delays.iter().sum::<f64>() / delays.len() as f64;
        let sd =
            (delays.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / delays.len() as f64).sqrt();
        // Cutting at zero shifts the mean up a little (2.3% of draws).
        assert!((mean - 40.0).abs() < 1.5, "mean {mean}");
        assert!((sd - 20.0).abs() < 1.5, "sd {sd}");
        let reordered = model.counts().reordered as f64 / 10_000.0;
        assert!(reordered > 0.1, "reordered {reordered}");
    }

    #[test]
    fn duplicates_come_at_their_rate() {
        let profile = NetworkProfile {
            duplicate: 0.1,
            seed: 5,
            ..NetworkProfile::default()
        };
        let (model, out) = run(profile, 10_000);
        let copies = out.iter().filter(|d| d.copy.is_some()).count();
        assert_eq!(copies as u64, model.counts().duplicated);
        assert!((copies as f64 / 10_000.0 - 0.1).abs() < 0.01, "{copies}");
    }

    #[test]
    fn a_bandwidth_cap_queues_then_drops_what_does_not_fit() {
        // 160-byte packets every 20 ms need 64 kbit/s; give them 32.
        let profile = NetworkProfile {
            bandwidth_bps: Some(32_000),
            max_queue: Duration::from_millis(200),
            ..NetworkProfile::default()
        };
        let (model, out) = run(profile, 1000);
        let c = model.counts();
        assert!((c.loss_rate() - 0.5).abs() < 0.02, "{c:?}");
        let start = out[0].first.unwrap();
        let last = out.iter().rev().find_map(|d| d.first).unwrap();
        // Delivered at the link's rate: 40 ms per packet.
        let per_packet = (last - start).as_secs_f64() / (1000 - c.lost - 1) as f64;
        assert!((per_packet - 0.04).abs() < 0.002, "{per_packet}");
    }

    #[test]
    fn the_same_seed_gives_the_same_network() {
        let profile = NetworkProfile {
            loss: 0.1,
            jitter: Duration::from_millis(30),
            delay: Duration::from_millis(50),
            duplicate: 0.05,
            seed: 42,
            ..NetworkProfile::default()
        };
        let start = Instant::now();
        let offsets = |model: &mut NetworkModel| -> Vec<Option<Duration>> {
            (0..500)
                .map(|i| {
                    let at = start + Duration::from_millis(20 * i);
                    model.offer(at, 100).first.map(|t| t - at)
                })
                .collect()
        };
        let a = offsets(&mut NetworkModel::new(profile));
        let b = offsets(&mut NetworkModel::new(profile));
        assert_eq!(a, b);
    }
}
