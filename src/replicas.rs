//! Replicas of the gate sharing one store (`[store] url`): each one follows the admin changes
//! the others make, shares its admin lockouts, and says whether its allowlist files are the
//! same as theirs. Per-replica state stays per replica (single-flight downloads, verdict and
//! page caches, the local disk cache): it is rebuilt from the shared store when needed.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::store::cache::now_secs;
use crate::AppState;

/// How often the store's generation is read: a change on one replica is in force on every
/// other within this and one policy build.
const POLL: Duration = Duration::from_millis(500);
/// A replica that has not read the store for this long refuses every request (503) until it
/// has: with [`POLL`], a change made on one replica is in force on the others, or they refuse,
/// within 2 s of being stored.
pub const LEASE_MS: u64 = 1500;
/// Lockouts are read every this many polls, replicas are seen every this many.
const LOCKOUTS_EVERY: u64 = 2;
const HEARTBEAT_EVERY: u64 = 10;
/// A replica not seen for this long is no longer compared with.
const SEEN_WITHIN_SECS: i64 = 30;

/// This replica's name among the others: the host (a Pod's name) and the process.
fn replica_id(st: &AppState) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is what the call is given;
    // the result is read only up to the first NUL within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown".into()
    };
    format!("{host}:{}:{}", st.config.listen.port(), std::process::id())
}

/// Runs while the gate does (it holds the state only while it works on it).
pub async fn follow(state: Weak<AppState>) {
    let Some(id) = state.upgrade().map(|st| replica_id(&st)) else {
        return;
    };
    let mut seen: Option<u64> = None;
    // The API rules of the policy this replica put in force last (none yet).
    let mut in_force: Option<Vec<crate::loader::ApiRule>> = None;
    let mut unreachable = false;
    let mut every = tokio::time::interval(POLL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for tick in 0u64.. {
        every.tick().await;
        let Some(st) = state.upgrade() else {
            return;
        };
        let s = st.clone();
        // The store as of this moment at least: what the reading shows was stored by then.
        let asked = st.uptime_ms();
        let generation = tokio::task::spawn_blocking(move || s.store.generation()).await;
        match generation {
            Ok(Ok(Some(g))) => {
                if unreachable {
                    tracing::info!("the shared store answers again");
                    unreachable = false;
                }
                let followed = seen == Some(g) || {
                    // The first reading too: a change made while this replica started.
                    let ok = follow_change(&st, seen.is_some(), &mut in_force).await;
                    if ok {
                        seen = Some(g);
                    }
                    ok
                };
                if followed {
                    st.synced_ms.fetch_max(asked, Relaxed);
                }
            }
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                if !unreachable {
                    tracing::error!(error = %e, "the shared store cannot be read: changes made on other replicas are not followed until it can");
                    unreachable = true;
                }
            }
            Err(_) => {}
        }
        if tick % LOCKOUTS_EVERY == 0 {
            let s = st.clone();
            let _ = tokio::task::spawn_blocking(move || s.throttle.sync(now_secs())).await;
        }
        if tick % HEARTBEAT_EVERY == 0 {
            heartbeat(&st, &id).await;
        }
    }
}

/// Reads the admin API's rules and revocations again and puts the policy they make in force;
/// false when the revocations could not be put in force.
async fn follow_change(
    st: &Arc<AppState>,
    counted: bool,
    in_force: &mut Option<Vec<crate::loader::ApiRule>>,
) -> bool {
    // An admin write of this replica in progress applies its own change; this one waits a
    // moment for it and otherwise tries again at the next poll (its lease is not renewed).
    let Ok(_writes) = tokio::time::timeout(Duration::from_secs(1), st.admin_writes.lock()).await
    else {
        return false;
    };
    let s = st.clone();
    let read = tokio::task::spawn_blocking(move || {
        Ok::<_, crate::store::StoreError>((
            crate::loader::api_rules(&s.store)?,
            crate::loader::api_revocations(&s.store)?,
        ))
    })
    .await;
    let (rules, revoked) = match read {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "the admin rules could not be read from the shared store");
            return false;
        }
        Err(_) => return false,
    };
    match st.build_policy(&rules, &revoked) {
        Ok(built) => {
            let version = st.apply(built);
            *in_force = Some(rules);
            *st.policy_problem.lock().unwrap_or_else(|p| p.into_inner()) = None;
            if counted {
                st.metrics.policy_followed.fetch_add(1, Relaxed);
                tracing::info!(
                    policy_version = version,
                    "policy changed on another replica; in force here"
                );
            }
        }
        Err(errs) => {
            let text = errs
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            tracing::error!(errors = %text, "a policy change made on another replica does not load with this replica's allowlist files; its rules stay as they were, its revocations are in force");
            *st.policy_problem.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
                "a policy change made on another replica does not load here (are the allowlist files the same?); the rules in force stay as they were, every revocation is in force: {text}"
            ));
            // The rules that loaded before, with every revocation now stored: a revocation
            // never waits on a rule that does not load. Without such rules (the first reading),
            // the lease runs out and the replica refuses until the files or the rule are fixed.
            let Some(rules) = in_force.as_ref() else {
                return false;
            };
            match st.build_policy(rules, &revoked) {
                Ok(built) => {
                    st.apply(built);
                }
                Err(_) => return false,
            }
        }
    }
    true
}

/// Records this replica's allowlist files and compares them with the other replicas'.
async fn heartbeat(st: &Arc<AppState>, id: &str) {
    let digest = st.files_digest();
    let (s, id2, d2) = (st.clone(), id.to_string(), digest.clone());
    let now = now_secs();
    let seen = tokio::task::spawn_blocking(move || {
        s.store.replica_seen(&id2, &d2, now, now - SEEN_WITHIN_SECS)
    })
    .await;
    let Ok(Ok(all)) = seen else {
        return;
    };
    let differing: Vec<&str> = all
        .iter()
        .filter(|(_, d)| *d != digest)
        .map(|(r, _)| r.as_str())
        .collect();
    st.metrics
        .replicas_differing
        .store(differing.len() as u64, Relaxed);
    let note = (!differing.is_empty()).then(|| {
        format!(
            "allowlist files differ between replicas: {} of the {} replicas seen in the last {SEEN_WITHIN_SECS} s loaded other files than this one ({}): deploy the same allowlists to every replica",
            differing.len(),
            all.len(),
            differing.join(", ")
        )
    });
    *st.replicas.lock().unwrap_or_else(|p| p.into_inner()) = note;
}
