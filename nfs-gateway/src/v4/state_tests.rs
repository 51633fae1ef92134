//! Tests of the NFSv4 state: client records, sessions' slots, leases.

use super::*;

fn session(slots: usize) -> Session {
    Session {
        id: [0; 16],
        client: 1,
        slots: Mutex::new((0..slots).map(|_| Slot::default()).collect()),
        max_request: 1 << 20,
        max_response: 1 << 20,
        max_cached: 4096,
        max_ops: 16,
    }
}

/// A step of a client (or a confused one) on a session of three slots: a request on
/// `slot` whose seqid is the slot's last run one plus `delta`, or the answer to what runs
/// there.
#[derive(Clone, Debug)]
enum Step {
    Request { slot: u32, delta: i8, cache: bool },
    Answer { slot: u32 },
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        (0..4u32, -2..3i8, any::<bool>()).prop_map(|(slot, delta, cache)| Step::Request {
            slot,
            delta,
            cache
        }),
        (0..3u32).prop_map(|slot| Step::Answer { slot }),
    ]
}

proptest::proptest! {
    /// Whatever arrives, each (slot, seqid) runs at most once; a retry of the last
    /// request is answered with exactly the reply that request left, if it was cached;
    /// nothing runs on a slot while a request is running there; and the slot past the
    /// table is BADSLOT.
    #[test]
    fn a_slot_runs_each_request_once(steps in proptest::collection::vec(step(), 1..200)) {
        let s = session(3);
        let mut last = [0u32; 3];
        let mut running: [Option<bool>; 3] = [None; 3];
        let mut kept: [Option<Vec<u8>>; 3] = Default::default();
        let mut ran = HashSet::new();
        for (i, step) in steps.into_iter().enumerate() {
            match step {
                Step::Request { slot, delta, cache } => {
                    let seqid = last.get(slot as usize).map_or(1, |l| l.wrapping_add_signed(i32::from(delta)));
                    let outcome = s.begin(slot, seqid, cache);
                    if slot >= 3 {
                        proptest::prop_assert_eq!(outcome.err().map(|f| f.status), Some(Status::BADSLOT));
                        continue;
                    }
                    let at = slot as usize;
                    match outcome {
                        Ok(SlotUse::New { cache: asked }) => {
                            proptest::prop_assert!(running[at].is_none(), "ran beside a running request");
                            proptest::prop_assert!(ran.insert((slot, seqid)), "ran twice");
                            proptest::prop_assert_eq!(seqid, last[at].wrapping_add(1));
                            last[at] = seqid;
                            running[at] = Some(asked);
                            kept[at] = None;
                        }
                        Ok(SlotUse::Replay(reply)) => {
                            proptest::prop_assert_eq!(seqid, last[at]);
                            proptest::prop_assert_eq!(Some(reply), kept[at].clone());
                        }
                        Err(f) => match f.status {
                            Status::DELAY => proptest::prop_assert!(running[at].is_some()),
                            Status::RETRY_UNCACHED_REP => {
                                proptest::prop_assert!(seqid == last[at] && kept[at].is_none());
                            }
                            Status::SEQ_MISORDERED => {
                                proptest::prop_assert!(seqid != last[at] && seqid != last[at].wrapping_add(1));
                            }
                            other => proptest::prop_assert!(false, "unexpected {:?}", other),
                        },
                    }
                }
                Step::Answer { slot } => {
                    let at = slot as usize;
                    if let Some(cache) = running[at].take() {
                        let reply = cache.then(|| format!("reply {i}").into_bytes());
                        s.finish(slot, reply.clone());
                        kept[at] = reply;
                    }
                }
            }
        }
    }
}

#[test]
fn slots_run_each_request_once_and_replay_what_was_cached() {
    let s = session(2);
    assert!(matches!(s.begin(0, 1, true), Ok(SlotUse::New { cache: true })));
    assert_eq!(s.begin(0, 1, true).err().unwrap().status, Status::DELAY, "still running");
    s.finish(0, Some(b"reply".to_vec()));
    assert!(matches!(s.begin(0, 1, true), Ok(SlotUse::Replay(r)) if r == b"reply"));
    assert_eq!(s.begin(0, 3, false).err().unwrap().status, Status::SEQ_MISORDERED);
    assert!(matches!(s.begin(0, 2, false), Ok(SlotUse::New { cache: false })));
    s.finish(0, None);
    assert_eq!(s.begin(0, 2, false).err().unwrap().status, Status::RETRY_UNCACHED_REP);
    assert_eq!(s.begin(2, 1, false).err().unwrap().status, Status::BADSLOT);
}

fn id_of(state: &State, verifier: u8, principal: Principal, update: bool) -> OpResult<u64> {
    state.exchange(b"host-a", [verifier; 8], 1, principal, update).map(|e| e.id)
}

fn session_of(state: &State, client: u64) -> Released {
    let made = state.add_session(client, |id| Session { id, client, ..session(1) });
    made.unwrap().1
}

#[test]
fn a_client_record_follows_rfc_8881s_exchange_id_cases() {
    let state = State::new(Duration::from_secs(60));
    let (alice, bob) = ((1000, 1000), (1001, 1001));
    // An update of nothing; a new record; an unconfirmed record is replaced.
    assert_eq!(id_of(&state, 1, alice, true).unwrap_err().status, Status::NOENT);
    let first = id_of(&state, 1, alice, false).unwrap();
    let a = id_of(&state, 1, alice, false).unwrap();
    assert_ne!(first, a, "an unconfirmed record is replaced");
    assert_eq!(state.with_client(first, |_| Ok(())).unwrap_err().status, Status::STALE_CLIENTID);
    session_of(&state, a);
    // Confirmed: the same verifier and principal keep the id; an update needs both.
    assert_eq!(id_of(&state, 1, alice, false).unwrap(), a);
    assert_eq!(id_of(&state, 1, alice, true).unwrap(), a);
    assert_eq!(id_of(&state, 2, alice, true).unwrap_err().status, Status::NOT_SAME);
    assert_eq!(id_of(&state, 1, bob, true).unwrap_err().status, Status::PERM);
    // Another principal may not take a record that holds state (a session).
    assert_eq!(id_of(&state, 1, bob, false).unwrap_err().status, Status::CLID_INUSE);
    // A reboot: a new record; the old one keeps its session until the new one is confirmed.
    let b = id_of(&state, 2, alice, false).unwrap();
    assert_ne!(a, b);
    assert!(state.with_client(a, |c| Ok(c.sessions.len())).unwrap() == 1);
    session_of(&state, b);
    assert_eq!(state.with_client(a, |_| Ok(())).unwrap_err().status, Status::STALE_CLIENTID);
    assert_eq!(state.tables.lock().unwrap().sessions.len(), 1, "the old session went with it");
}

#[test]
fn setclientid_confirm_checks_its_verifier_and_principal_and_ends_the_old_incarnation() {
    let state = State::new(Duration::from_secs(60));
    let alice = (1000, 1000);
    let old = state.exchange(b"host", [1; 8], 0, alice, false).unwrap();
    assert_eq!(state.confirm(old.id, [9; 8], alice).err().unwrap().status, Status::STALE_CLIENTID);
    assert_eq!(state.confirm(old.id, old.confirm, (0, 0)).err().unwrap().status, Status::CLID_INUSE);
    state.confirm(old.id, old.confirm, alice).unwrap();
    // A callback update keeps the id with a new confirm verifier.
    let again = state.exchange(b"host", [1; 8], 0, alice, false).unwrap();
    assert_eq!((again.id, again.confirmed), (old.id, true));
    assert_ne!(again.confirm, old.confirm);
    let new = state.exchange(b"host", [2; 8], 0, alice, false).unwrap();
    assert!(state.with_client(old.id, |_| Ok(())).is_ok(), "kept until the new one is confirmed");
    state.confirm(new.id, new.confirm, alice).unwrap();
    assert!(state.with_client(old.id, |_| Ok(())).is_err());
}

#[test]
fn expired_clients_go() {
    let state = State::new(Duration::ZERO);
    let b = state.exchange(b"host-a", [2; 8], 1, (0, 0), false).unwrap().id;
    std::thread::sleep(Duration::from_millis(2));
    state.expire();
    assert!(state.with_client(b, |_| Ok(())).is_err(), "a zero lease expires at once");
}
