//! Bounded denials: a client's denials beyond `max_denials_per_client` within one window fold
//! into one counted entry per (client, reason), with a sample of what was asked for.
//!
//! Every denial is an entry until the limit, so ordinary refusals keep their full detail; past
//! it, the store grows by one entry per (client, reason) per window however fast the client
//! asks. Nothing is dropped: the folded entry's count is the exact number of denials it stands
//! for.

use std::collections::HashMap;

use super::AuditEvent;

/// Clients tracked at once; denials from further clients fold together at once (under
/// [`MANY`]), so a flood from many addresses cannot grow this table either.
const MAX_CLIENTS: usize = 1_000;
/// Denials kept as entries of their own per hour (or per window, when longer), all clients
/// together, in multiples of `max_denials_per_client`: past it, every denial folds under
/// [`MANY`], one entry per reason per window. Many addresses cannot multiply the allowance,
/// and the allowance is not renewed every window: the log grows by at most this many
/// denial entries an hour, whatever the flood.
const ALL_CLIENTS_FACTOR: u64 = 10;
/// The period of the all-clients allowance, at least.
const ALL_CLIENTS_PERIOD: i64 = 3600;
/// The client name denials are folded under once [`MAX_CLIENTS`] are tracked.
pub const MANY: &str = "(many clients)";
/// Subjects kept as a sample per folded entry.
const SAMPLES: usize = 10;

struct Fold {
    template: AuditEvent,
    count: u64,
    first: i64,
    last: i64,
    samples: Vec<String>,
}

#[derive(Default)]
struct Window {
    start: i64,
    denials: u64,
    /// By reason, in the order first folded.
    folds: Vec<(String, Fold)>,
}

/// What [`Folder::sort`] did with an event.
pub enum Sorted {
    /// To be stored as an entry of its own.
    Kept(AuditEvent),
    /// Counted in a folded entry; given back to be logged.
    Folded(AuditEvent),
}

pub struct Folder {
    /// What this folder folds: "deny", or "allow" (allowed requests are as cheap to flood with:
    /// any client may view an allowlisted page).
    decision: &'static str,
    /// The all-clients allowance per hour, in multiples of `max`.
    factor: u64,
    max: u64,
    window: i64,
    /// The window of all clients together: its start and the denials kept in it.
    all_start: i64,
    all_kept: u64,
    /// Set while the disk is below min_free_disk: every denial folds.
    pub fold_all: bool,
    clients: HashMap<String, Window>,
    /// Folded entries of windows that ended, to be written with the next batch.
    ready: Vec<(AuditEvent, u64)>,
}

/// An event that may fold: of the folder's decision, not an admin change (those are always
/// their own entry), not a folded entry itself.
fn foldable(ev: &AuditEvent, decision: &str) -> bool {
    ev.decision == decision
        && ev.before.is_none()
        && ev.after.is_none()
        && ev.action != "audit.folded"
}

impl Folder {
    /// Denials: `max` per client per window, ten times that per hour for all clients.
    pub fn new(max: u64, window: std::time::Duration) -> Folder {
        Folder::of("deny", ALL_CLIENTS_FACTOR, max, window)
    }

    /// Allowed requests: the same per client, and `factor` times `max` per hour for all
    /// clients (ordinary traffic is mostly allowed: a larger share keeps its detail).
    pub fn of(
        decision: &'static str,
        factor: u64,
        max: u64,
        window: std::time::Duration,
    ) -> Folder {
        Folder {
            decision,
            factor,
            max: max.max(1),
            window: (window.as_secs() as i64).max(1),
            all_start: 0,
            all_kept: 0,
            fold_all: false,
            clients: HashMap::new(),
            ready: Vec::new(),
        }
    }

    /// Counts a denial against its client's window: `Some` gives the event back to be stored
    /// as its own entry, `None` means it was folded (and will be written when the window ends).
    pub fn admit(&mut self, ev: AuditEvent) -> Option<AuditEvent> {
        match self.sort(ev) {
            Sorted::Kept(ev) => Some(ev),
            Sorted::Folded(_) => None,
        }
    }

    /// [`Folder::admit`], giving a folded event back for the log stream: the event is
    /// copied only when it starts a new folded entry, not on every request.
    pub fn sort(&mut self, ev: AuditEvent) -> Sorted {
        if !foldable(&ev, self.decision) {
            return Sorted::Kept(ev);
        }
        let now = ev.time;
        if now >= self.all_start + self.window.max(ALL_CLIENTS_PERIOD) {
            self.all_start = now;
            self.all_kept = 0;
        }
        let spent = self.all_kept >= self.max.saturating_mul(self.factor);
        let key = if !spent
            && (self.clients.contains_key(&ev.client) || self.clients.len() < MAX_CLIENTS)
        {
            ev.client.clone()
        } else {
            MANY.to_string()
        };
        let window = self.window;
        let w = self.clients.entry(key.clone()).or_insert_with(|| Window {
            start: now,
            ..Window::default()
        });
        if now >= w.start + window {
            let ended = std::mem::replace(
                w,
                Window {
                    start: now,
                    ..Window::default()
                },
            );
            let (max, win, decision) = (self.max, self.window, self.decision);
            self.ready.extend(
                ended
                    .folds
                    .into_iter()
                    .map(|(_, f)| folded(&key, f, max, win, decision)),
            );
        }
        let Some(w) = self.clients.get_mut(&key) else {
            return Sorted::Kept(ev);
        };
        w.denials += 1;
        // The "many clients" bucket folds from its first denial: its members each had no
        // allowance of their own.
        if w.denials <= self.max && key != MANY && !self.fold_all {
            self.all_kept += 1;
            return Sorted::Kept(ev);
        }
        let sample = match &ev.artifact {
            Some(a) if key == MANY => format!("{} {} {}/{a}", ev.client, ev.action, ev.subject),
            Some(a) => format!("{} {}/{a}", ev.action, ev.subject),
            None if key == MANY => format!("{} {} {}", ev.client, ev.action, ev.subject),
            None => format!("{} {}", ev.action, ev.subject),
        };
        let mut sample = sample;
        super::clip(&mut sample, super::MAX_FIELD);
        match w.folds.iter_mut().find(|(r, _)| *r == ev.reason) {
            Some((_, f)) => {
                f.count += 1;
                f.last = now;
                if f.samples.len() < SAMPLES && !f.samples.contains(&sample) {
                    f.samples.push(sample);
                }
            }
            None => w.folds.push((
                ev.reason.clone(),
                Fold {
                    count: 1,
                    first: now,
                    last: now,
                    samples: vec![sample],
                    template: ev.clone(),
                },
            )),
        }
        Sorted::Folded(ev)
    }

    /// The folded entries due at `now`: windows that ended, or every window (`None`, at
    /// shutdown). Ended windows without folds are forgotten.
    pub fn due(&mut self, now: Option<i64>) -> Vec<(AuditEvent, u64)> {
        let mut out = std::mem::take(&mut self.ready);
        let (max, win, decision) = (self.max, self.window, self.decision);
        self.clients.retain(|client, w| {
            let ended = now.is_none_or(|n| n >= w.start + win);
            if ended {
                out.extend(
                    std::mem::take(&mut w.folds)
                        .into_iter()
                        .map(|(_, f)| folded(client, f, max, win, decision)),
                );
            }
            !ended
        });
        out
    }

    /// Folded entries of windows that ended when a new denial arrived.
    pub fn due_ready(&mut self) -> Vec<(AuditEvent, u64)> {
        std::mem::take(&mut self.ready)
    }

    /// Denials folded and not yet written.
    pub fn pending(&self) -> u64 {
        let open: u64 = self
            .clients
            .values()
            .flat_map(|w| w.folds.iter().map(|(_, f)| f.count))
            .sum();
        open + self.ready.iter().map(|(_, n)| n).sum::<u64>()
    }
}

/// The entry that stands for `f.count` folded events.
fn folded(client: &str, f: Fold, max: u64, window: i64, decision: &str) -> (AuditEvent, u64) {
    let per = match window {
        1 => "s".to_string(),
        60 => "m".to_string(),
        3600 => "h".to_string(),
        w => format!("{w}s"),
    };
    let reason = f.template.reason.clone();
    let ev = AuditEvent {
        time: f.last,
        action: "audit.folded".into(),
        decision: decision.into(),
        detail: format!(
            "{} further {} ({reason}) for client {client} between {} and {} (unix seconds), above max_denials_per_client {max}/{per} or the all-clients allowance; the first of the window are entries of their own",
            f.count,
            if decision == "deny" { "denials" } else { "allowed requests" },
            f.first,
            f.last
        ),
        subject: client.to_string(),
        artifact: None,
        sha256: None,
        actual_sha256: None,
        client: client.to_string(),
        actor: None,
        before: None,
        after: None,
        samples: Some(f.samples),
        reason,
    };
    (ev, f.count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deny(client: &str, subject: &str, reason: &str, time: i64) -> AuditEvent {
        let mut ev = AuditEvent::about("pypi.page", subject.into(), None, None, client)
            .deny(reason, "not on the allowlist".into());
        ev.time = time;
        ev
    }

    #[test]
    fn denials_past_the_limit_fold_with_an_exact_count() {
        let mut f = Folder::new(3, std::time::Duration::from_secs(60));
        let mut kept = 0;
        for i in 0..10 {
            kept += f
                .admit(deny("10.0.0.1", &format!("p{i}"), "not_allowlisted", 100))
                .is_some() as u32;
        }
        kept += f.admit(deny("10.0.0.1", "q", "too_new", 101)).is_some() as u32;
        // Another client has its own allowance; an allow is never folded.
        kept += f
            .admit(deny("10.0.0.2", "x", "not_allowlisted", 101))
            .is_some() as u32;
        let allow = AuditEvent::about("pypi.page", "a".into(), None, None, "10.0.0.1")
            .allow("project_rule", "index pypi".into());
        kept += f.admit(allow).is_some() as u32;
        assert_eq!(kept, 3 + 1 + 1);
        assert_eq!(f.pending(), 8);
        // Nothing is due before the window ends.
        assert!(f.due(Some(159)).is_empty());
        let due = f.due(Some(160));
        let counts: Vec<(String, u64)> = due.iter().map(|(e, n)| (e.reason.clone(), *n)).collect();
        assert_eq!(
            counts,
            vec![("not_allowlisted".into(), 7), ("too_new".into(), 1)]
        );
        assert_eq!(due[0].0.action, "audit.folded");
        assert_eq!(due[0].0.samples.as_ref().map(Vec::len), Some(7));
        assert_eq!(f.pending(), 0);
        // A new window starts a new allowance.
        assert!(f
            .admit(deny("10.0.0.1", "p", "not_allowlisted", 200))
            .is_some());
    }

    #[test]
    fn a_window_that_ends_on_a_new_denial_still_writes_its_folds() {
        let mut f = Folder::new(1, std::time::Duration::from_secs(10));
        assert!(f.admit(deny("c", "a", "r", 0)).is_some());
        assert!(f.admit(deny("c", "b", "r", 1)).is_none());
        assert!(f.admit(deny("c", "c", "r", 20)).is_some());
        let due = f.due(Some(21));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1, 1);
        assert_eq!(f.due(None).len(), 0);
    }

    #[test]
    fn many_addresses_share_one_allowance_past_ten_clients_worth() {
        let mut f = Folder::new(10, std::time::Duration::from_secs(60));
        let kept = (0..50)
            .flat_map(|c| (0..10).map(move |i| (c, i)))
            .filter(|(c, i)| {
                f.admit(deny(&format!("10.0.0.{c}"), &format!("p{i}"), "r", 0))
                    .is_some()
            })
            .count();
        assert_eq!(kept, 100);
        assert_eq!(f.pending(), 400);
        // The next windows of the hour renew no allowance: everything folds, and past the
        // spent allowance it folds into one bucket, one entry per reason per window.
        for minute in 1..60 {
            for c in 0..50 {
                let ev = deny(&format!("10.0.0.{c}"), "q", "r", minute * 60);
                assert!(f.admit(ev).is_none());
            }
        }
        let written = f.due(None);
        // The first window's folds per client, then one bucket per window (not 50 a window).
        assert!(written.len() <= 50 + 59, "{}", written.len());
        assert_eq!(written.iter().map(|(_, n)| n).sum::<u64>(), 400 + 59 * 50);
        // An hour on, a new allowance.
        assert!(f.admit(deny("10.0.0.1", "z", "r", 3600)).is_some());
    }

    #[test]
    fn allowed_requests_from_many_addresses_fold_too() {
        let mut f = Folder::of("allow", 100, 10, std::time::Duration::from_secs(60));
        let allow = |client: &str, i: usize| {
            let mut ev = AuditEvent::about("pypi.page", format!("p{i}"), None, None, client)
                .allow("allowlisted", String::new());
            ev.time = 0;
            ev
        };
        let mut kept = 0;
        for c in 0..200 {
            for i in 0..20 {
                kept += f.admit(allow(&format!("10.1.0.{c}"), i)).is_some() as usize;
            }
        }
        // Ten a client until the all-clients allowance (100 × 10) is spent.
        assert_eq!(kept, 1000);
        assert_eq!(f.pending(), 200 * 20 - 1000);
        // Denials are not this folder's to fold.
        assert!(f.admit(deny("10.1.0.1", "x", "r", 0)).is_some());
    }

    #[test]
    fn a_full_disk_folds_every_denial() {
        let mut f = Folder::new(1000, std::time::Duration::from_secs(60));
        f.fold_all = true;
        assert!(f.admit(deny("c", "a", "r", 0)).is_none());
        assert_eq!(f.due(None)[0].1, 1);
    }

    #[test]
    fn many_clients_share_one_folded_bucket() {
        let mut f = Folder::new(1000, std::time::Duration::from_secs(60));
        for i in 0..MAX_CLIENTS {
            assert!(f.admit(deny(&format!("c{i}"), "a", "r", 0)).is_some());
        }
        assert!(f.admit(deny("late", "a", "r", 0)).is_none());
        let due = f.due(None);
        let many: Vec<_> = due.iter().filter(|(e, _)| e.client == MANY).collect();
        assert_eq!(many.len(), 1);
        assert_eq!(many[0].1, 1);
    }
}
