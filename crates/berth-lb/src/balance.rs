//! Target selection: a pure function of a snapshot of the candidates, a
//! round-robin cursor and two random numbers supplied by the caller.

/// How a target group spreads requests over its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// Each eligible target in turn.
    RoundRobin,
    /// Least outstanding requests between two randomly chosen eligible
    /// targets ("power of two choices").
    #[default]
    LeastOutstanding,
}

/// What the selector needs to know about one target at the moment of choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Candidate {
    /// Its active health checks pass.
    pub healthy: bool,
    /// Passive outlier detection has ejected it for now.
    pub ejected: bool,
    /// It is deregistered and only finishes what it already has.
    pub draining: bool,
    /// Its circuit breaker is open (max pending requests reached).
    pub saturated: bool,
    /// Requests sent to it and not yet answered.
    pub outstanding: u32,
    /// Recent failures (see [`error_penalty`]): least-outstanding selection
    /// counts the load of a candidate as `(outstanding + 1) x (penalty + 1)`,
    /// so that it leans away from a target that fails part of its requests
    /// without ejecting it.
    pub penalty: u32,
}

/// One failure adds this much to a target's error score.
pub const ERROR_WEIGHT: u32 = 64;

/// The error score after one more outcome: failures add [`ERROR_WEIGHT`],
/// successes take off a thirty-second (at least one), so the score settles
/// where failures and decay balance: about 16 x weight x failure ratio /
/// (1 - ratio), and goes back to zero on a clean run.
pub fn next_error_score(score: u32, failed: bool) -> u32 {
    if failed {
        score.saturating_add(ERROR_WEIGHT).min(ERROR_WEIGHT * 1024)
    } else {
        score.saturating_sub((score / 32).max(1))
    }
}

/// The error score in units of outstanding requests.
pub fn error_penalty(score: u32) -> u32 {
    score / ERROR_WEIGHT
}

impl Candidate {
    fn strict(&self) -> bool {
        self.healthy && !self.ejected && !self.draining && !self.saturated
    }

    /// When no target passes, the group fails open to every registered
    /// target that can take a request (as ALB does with all targets
    /// unhealthy): better a chance than a certain 503.
    fn fail_open(&self) -> bool {
        !self.draining && !self.saturated
    }
}

/// Picks the index of the target for the next attempt, skipping `tried`
/// (targets this request has already failed on). `cursor` is a round-robin
/// counter the caller increments per call; `r1`/`r2` are random numbers.
/// Returns `None` when no target can take the request.
pub fn pick(cands: &[Candidate], tried: &[usize], algo: Algorithm, cursor: u64, r1: u64, r2: u64) -> Option<usize> {
    pick_tier(cands, tried, algo, cursor, r1, r2, Candidate::strict)
        .or_else(|| pick_tier(cands, tried, algo, cursor, r1, r2, Candidate::fail_open))
}

fn pick_tier(
    cands: &[Candidate],
    tried: &[usize],
    algo: Algorithm,
    cursor: u64,
    r1: u64,
    r2: u64,
    ok: fn(&Candidate) -> bool,
) -> Option<usize> {
    let eligible = |i: usize| ok(&cands[i]) && !tried.contains(&i);
    let m = (0..cands.len()).filter(|&i| eligible(i)).count();
    if m == 0 {
        return None;
    }
    let nth = |k: usize| (0..cands.len()).filter(|&i| eligible(i)).nth(k);
    match algo {
        Algorithm::RoundRobin => nth((cursor % m as u64) as usize),
        Algorithm::LeastOutstanding => {
            let a = nth((r1 % m as u64) as usize)?;
            if m == 1 {
                return Some(a);
            }
            // A second, distinct choice: offset by 1..m-1 from the first.
            let first = (r1 % m as u64) as usize;
            let b = nth((first + 1 + (r2 % (m as u64 - 1)) as usize) % m)?;
            // Failures multiply the load: a target failing a fifth of its
            // requests looks about nine times as busy.
            let load = |i: usize| (u64::from(cands[i].outstanding) + 1) * (u64::from(cands[i].penalty) + 1);
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy(outstanding: u32) -> Candidate {
        Candidate {
            healthy: true,
            outstanding,
            ..Candidate::default()
        }
    }

    #[test]
    fn round_robin_visits_every_eligible_target_in_turn() {
        let mut c = vec![healthy(0); 4];
        c[2].healthy = false;
        let picks: Vec<_> = (0..6)
            .map(|k| pick(&c, &[], Algorithm::RoundRobin, k, 0, 0).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 3, 0, 1, 3]);
    }

    #[test]
    fn skips_ejected_draining_saturated_and_tried() {
        let mut c = vec![healthy(0); 5];
        c[0].ejected = true;
        c[1].draining = true;
        c[2].saturated = true;
        for k in 0..20 {
            for algo in [Algorithm::RoundRobin, Algorithm::LeastOutstanding] {
                assert_eq!(pick(&c, &[3], algo, k, k * 7, k * 13), Some(4));
            }
        }
    }

    #[test]
    fn p2c_prefers_the_less_loaded_of_two() {
        let c = vec![healthy(10), healthy(1)];
        for k in 0..50 {
            assert_eq!(pick(&c, &[], Algorithm::LeastOutstanding, 0, k, k * 3), Some(1));
        }
    }

    #[test]
    fn p2c_never_picks_the_most_loaded_of_three() {
        let c = vec![healthy(5), healthy(100), healthy(7)];
        let mut seen = [0; 3];
        for r1 in 0..30 {
            for r2 in 0..30 {
                seen[pick(&c, &[], Algorithm::LeastOutstanding, 0, r1, r2).unwrap()] += 1;
            }
        }
        assert_eq!(seen[1], 0);
        assert!(seen[0] > 0 && seen[2] > 0);
    }

    #[test]
    fn p2c_charges_recent_failures_as_load() {
        let mut c = vec![healthy(3), healthy(10)];
        c[0].penalty = 2;
        for k in 0..20 {
            assert_eq!(pick(&c, &[], Algorithm::LeastOutstanding, 0, k, k + 1), Some(1));
        }
    }

    #[test]
    fn error_score_settles_with_the_failure_ratio_and_decays_to_zero() {
        let mut score = 0;
        // One failure in five.
        for n in 0..5_000 {
            score = next_error_score(score, n % 5 == 0);
        }
        assert!(
            (6..=10).contains(&error_penalty(score)),
            "penalty={}",
            error_penalty(score)
        );
        for _ in 0..1_000 {
            score = next_error_score(score, false);
        }
        assert_eq!(score, 0);
        let mut rare = 0;
        for n in 0..5_000 {
            rare = next_error_score(rare, n % 100 == 0);
        }
        assert_eq!(error_penalty(rare), 0);
    }

    #[test]
    fn fails_open_to_unhealthy_or_ejected_when_nothing_passes() {
        let mut c = vec![healthy(0); 2];
        c[0].healthy = false;
        c[1].ejected = true;
        let p = pick(&c, &[], Algorithm::RoundRobin, 0, 0, 0);
        assert!(p.is_some());
        c[0].draining = true;
        c[1].saturated = true;
        assert_eq!(pick(&c, &[], Algorithm::LeastOutstanding, 0, 1, 2), None);
        assert_eq!(pick(&[], &[], Algorithm::RoundRobin, 0, 0, 0), None);
    }
}
