//! A linearizability checker for histories of concurrent operations, and the model of a
//! Confman key as a versioned register.
//!
//! The search is Wing & Gong's, with Lowe's just-in-time linearization and the cache of
//! (linearized set, state) pairs that Porcupine and Knossos use: walk the history's call and
//! return events in time order; at a call, try to linearize that operation now (the model
//! must accept its input and output in the current state); at a return whose operation is not
//! linearized yet, undo the last choice and try the next. A history is linearizable when every
//! operation is placed. An operation whose outcome is unknown (a timeout, a lost connection)
//! returns "at infinity" with any output, so it may take effect at any point after its call
//! or, placed last, not at all.
//!
//! Keys are independent registers, so a history is checked key by key (P-compositionality),
//! which keeps each search small.

use std::collections::HashSet;
use std::fmt;
use std::hash::Hash;

/// What a model needs to judge one operation.
pub trait Model {
    /// The state the operations act on.
    type State: Clone + Eq + Hash + fmt::Debug;
    /// What an operation asks for.
    type Input: fmt::Debug;
    /// What an operation answered.
    type Output: fmt::Debug;
    /// The state before any operation.
    fn init(&self) -> Self::State;
    /// The state after `input` in `state`, if the operation could have answered `output`
    /// there (`None` output: the answer is unknown, any is fine).
    fn step(&self, state: &Self::State, input: &Self::Input, output: Option<&Self::Output>) -> Option<Self::State>;
}

/// One operation as a client saw it. Times are from one monotonic clock, any unit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Operation<I, O> {
    /// Which client issued it (for reports).
    pub client: usize,
    /// What it asked for.
    pub input: I,
    /// When the client sent it.
    pub call: u64,
    /// When the answer came; `None` when no answer came (unknown outcome).
    pub ret: Option<u64>,
    /// The answer; `None` when the outcome is unknown.
    pub output: Option<O>,
}

/// The verdict on one history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every operation found its place.
    Linearizable,
    /// No order explains the history.
    NotLinearizable {
        /// The operations (indexes into the history) concurrent with the blocked one.
        window: Vec<usize>,
        /// The operation whose answer no order could reach at the deepest point.
        blocked: usize,
        /// How many operations were placed at that point.
        placed: usize,
        /// The last operations placed before it, oldest first (what made the state).
        last_placed: Vec<usize>,
        /// The state they left (`Debug`).
        state: String,
    },
    /// The history itself is malformed (an answer before its call).
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// The search gave up (too many concurrent operations).
    GaveUp {
        /// Steps searched.
        steps: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Call,
    Return,
}

/// A node of the doubly linked event list (`usize::MAX` = none; 0 is the head sentinel).
#[derive(Debug, Clone)]
struct Event {
    kind: Kind,
    op: usize,
    /// The other event of the same operation.
    partner: usize,
    prev: usize,
    next: usize,
}

const NONE: usize = usize::MAX;

/// The events in time order: a call before a return at the same instant (two operations that
/// touch at an instant count as concurrent, the lenient reading).
fn events<I, O>(history: &[Operation<I, O>]) -> Vec<Event> {
    let mut order: Vec<(u64, Kind, usize)> = Vec::with_capacity(history.len() * 2);
    for (i, op) in history.iter().enumerate() {
        order.push((op.call, Kind::Call, i));
        order.push((op.ret.unwrap_or(u64::MAX), Kind::Return, i));
    }
    order.sort_by_key(|(t, kind, i)| (*t, *kind == Kind::Return, *i));
    let mut list = vec![Event { kind: Kind::Call, op: NONE, partner: NONE, prev: NONE, next: 1 }];
    let mut at = vec![[0usize; 2]; history.len()];
    for (n, (_, kind, op)) in order.iter().enumerate() {
        let idx = n + 1;
        at[*op][usize::from(*kind == Kind::Return)] = idx;
        list.push(Event {
            kind: *kind,
            op: *op,
            partner: NONE,
            prev: idx - 1,
            next: if n + 1 < order.len() { idx + 1 } else { NONE },
        });
    }
    if order.is_empty() {
        list[0].next = NONE;
    }
    for [call, ret] in at {
        list[call].partner = ret;
        list[ret].partner = call;
    }
    list
}

fn unlink(list: &mut [Event], i: usize) {
    let (prev, next) = (list[i].prev, list[i].next);
    list[prev].next = next;
    if next != NONE {
        list[next].prev = prev;
    }
}

fn relink(list: &mut [Event], i: usize) {
    let (prev, next) = (list[i].prev, list[i].next);
    list[prev].next = i;
    if next != NONE {
        list[next].prev = i;
    }
}

/// A set of operation indexes, hashable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Decides whether `history` is linearizable under `model`, searching at most `max_steps`
/// steps.
pub fn check<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>], max_steps: u64) -> Verdict {
    if let Some((i, _)) = history.iter().enumerate().find(|(_, op)| op.ret.is_some_and(|r| r < op.call)) {
        return Verdict::Invalid { reason: format!("operation #{i} returns before its call") };
    }
    let mut list = events(history);
    let mut state = model.init();
    let mut placed = Bits::new(history.len());
    let mut seen: HashSet<(Bits, M::State)> = HashSet::new();
    // The calls linearized so far, each with the state before it.
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    // The first deepest point: (placed count, blocked op, the placed calls, the state there).
    let mut deepest: Option<(usize, usize, Vec<usize>, M::State)> = None;
    let mut steps = 0u64;
    let mut cursor = list[0].next;
    while list[0].next != NONE {
        steps += 1;
        if steps > max_steps {
            return Verdict::GaveUp { steps };
        }
        if cursor == NONE {
            // Every remaining return follows its call, so a walk meets a return before the
            // end; reaching the end means the list is broken: fail closed.
            return Verdict::Invalid { reason: "the event list ended without a return".into() };
        }
        let ev = list[cursor].clone();
        match ev.kind {
            Kind::Call => {
                let op = &history[ev.op];
                let next_state = model.step(&state, &op.input, op.output.as_ref());
                let mut advanced = false;
                if let Some(next_state) = next_state {
                    let mut next_placed = placed.clone();
                    next_placed.set(ev.op);
                    if seen.insert((next_placed.clone(), next_state.clone())) {
                        stack.push((cursor, std::mem::replace(&mut state, next_state)));
                        placed = next_placed;
                        unlink(&mut list, cursor);
                        unlink(&mut list, ev.partner);
                        cursor = list[0].next;
                        advanced = true;
                    }
                }
                if !advanced {
                    cursor = ev.next;
                }
            }
            Kind::Return => {
                if deepest.as_ref().is_none_or(|(depth, ..)| stack.len() > *depth) {
                    let calls = stack.iter().map(|(call, _)| list[*call].op).collect();
                    deepest = Some((stack.len(), ev.op, calls, state.clone()));
                }
                let Some((call, before)) = stack.pop() else {
                    return match deepest {
                        Some((depth, blocked, calls, state)) => {
                            not_linearizable(history, depth, blocked, calls, &state)
                        }
                        None => Verdict::Invalid { reason: "no operation to report".into() },
                    };
                };
                let op = list[call].op;
                placed.clear(op);
                state = before;
                let partner = list[call].partner;
                relink(&mut list, partner);
                relink(&mut list, call);
                cursor = list[call].next;
            }
        }
    }
    Verdict::Linearizable
}

/// How many placed operations a report shows before the blocked one.
const REPORT_PLACED: usize = 6;

/// The report for a failed search: the operation whose answer could not be reached at the
/// first deepest point, every operation concurrent with it, and the last operations placed
/// before it with the state they left.
fn not_linearizable<I, O, S: fmt::Debug>(
    history: &[Operation<I, O>],
    placed: usize,
    blocked: usize,
    calls: Vec<usize>,
    state: &S,
) -> Verdict {
    let b = &history[blocked];
    let b_ret = b.ret.unwrap_or(u64::MAX);
    let window = history
        .iter()
        .enumerate()
        .filter(|(_, op)| op.call <= b_ret && op.ret.unwrap_or(u64::MAX) >= b.call)
        .map(|(i, _)| i)
        .collect();
    let last_placed = calls[calls.len().saturating_sub(REPORT_PLACED)..].to_vec();
    Verdict::NotLinearizable { window, blocked, placed, last_placed, state: format!("{state:?}") }
}

/// Formats the failing window of a verdict: the last operations placed, the state they left,
/// then the operations concurrent with the blocked one, in call order.
pub fn describe<I: fmt::Debug, O: fmt::Debug>(history: &[Operation<I, O>], verdict: &Verdict) -> String {
    let Verdict::NotLinearizable { window, blocked, placed, last_placed, state } = verdict else {
        return format!("{verdict:?}");
    };
    let line = |i: usize, mark: &str| {
        let op = &history[i];
        let ret = op.ret.map_or("never".to_string(), |r| r.to_string());
        format!("  #{i} client {} [{} .. {ret}] {:?} -> {:?}{mark}\n", op.client, op.call, op.input, op.output)
    };
    let mut out = format!("not linearizable: {placed} operations placed; the last of them:\n");
    for i in last_placed {
        out.push_str(&line(*i, ""));
    }
    out.push_str(&format!(
        "leaving the state {state}; then no order reaches the answer of #{blocked}; it and the operations \
         concurrent with it:\n"
    ));
    let mut ops: Vec<usize> = window.clone();
    ops.sort_by_key(|i| history[*i].call);
    for i in ops {
        out.push_str(&line(i, if i == *blocked { "  <- blocked" } else { "" }));
    }
    out
}

/// Checks `history` first without its unknown operations that no other operation saw (their
/// value never read, nor expected by a compare-and-set): any unknown operation may be placed
/// last, where it changes nothing anyone observed, so if the rest is linearizable so is the
/// whole. Each such operation otherwise stays pending to the end and multiplies the search
/// (the cache cannot merge their subsets: each changes the version). Only when that pass
/// fails is the full history searched, so a write that took effect unseen (a version gap) is
/// still judged exactly.
pub fn check_register(history: &[Operation<RegisterInput, RegisterOutput>], max_steps: u64) -> Verdict {
    let mut observed = HashSet::new();
    for op in history {
        match (&op.input, &op.output) {
            (_, Some(RegisterOutput::Read(Some((v, _))))) => {
                observed.insert(*v);
            }
            (RegisterInput::CompareAndSet { expected, .. }, _) => {
                observed.insert(*expected);
            }
            _ => {}
        }
    }
    let unseen_unknown = |op: &Operation<RegisterInput, RegisterOutput>| {
        op.output.is_none()
            && match op.input {
                RegisterInput::Write(v) | RegisterInput::CompareAndSet { value: v, .. } => !observed.contains(&v),
                RegisterInput::Read => true,
            }
    };
    if history.iter().any(unseen_unknown) {
        let pruned: Vec<_> = history.iter().filter(|op| !unseen_unknown(op)).cloned().collect();
        if check(&Register, &pruned, max_steps) == Verdict::Linearizable {
            return Verdict::Linearizable;
        }
    }
    check(&Register, history, max_steps)
}

/// A Confman key: absent, or a value (an id the test chose) at a version.
pub type RegisterState = Option<(u64, u64)>;

/// What a client does to a key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum RegisterInput {
    /// `GET` (linearizable).
    Read,
    /// `PUT` without a precondition.
    Write(u64),
    /// `PUT` with `If-Match` on the ETag of a state the client read; values are unique per
    /// write, so the ETag (a revision) and the value it read name the same write.
    CompareAndSet {
        /// The value (id) the client read with the ETag it sends.
        expected: u64,
        /// The value (id) it writes.
        value: u64,
    },
}

/// What the key answered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum RegisterOutput {
    /// A read: the value and version, or absent.
    Read(RegisterState),
    /// A write that took effect at this version.
    Written(u64),
    /// `412`: the version did not match.
    PreconditionFailed,
}

/// The versioned register: a write makes version 1 on an absent key and adds one otherwise;
/// a compare-and-set writes only over the expected value.
#[derive(Debug, Clone, Copy, Default)]
pub struct Register;

impl Model for Register {
    type State = RegisterState;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init(&self) -> RegisterState {
        None
    }

    fn step(
        &self,
        state: &RegisterState,
        input: &RegisterInput,
        output: Option<&RegisterOutput>,
    ) -> Option<RegisterState> {
        let next_version = state.map_or(1, |(_, v)| v + 1);
        let accepts = |want: RegisterOutput| output.is_none_or(|o| *o == want);
        match input {
            RegisterInput::Read => accepts(RegisterOutput::Read(*state)).then_some(*state),
            RegisterInput::Write(value) => {
                accepts(RegisterOutput::Written(next_version)).then_some(Some((*value, next_version)))
            }
            RegisterInput::CompareAndSet { expected, value } => {
                if state.is_some_and(|(v, _)| v == *expected) {
                    accepts(RegisterOutput::Written(next_version)).then_some(Some((*value, next_version)))
                } else {
                    accepts(RegisterOutput::PreconditionFailed).then_some(*state)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RegisterInput::{CompareAndSet, Write};
    use RegisterOutput::{PreconditionFailed, Written};

    /// `RegisterInput::Read`, the input.
    const READ: RegisterInput = RegisterInput::Read;
    /// `RegisterOutput::Read`, an answer.
    fn seen(state: RegisterState) -> RegisterOutput {
        RegisterOutput::Read(state)
    }

    type Op = Operation<RegisterInput, RegisterOutput>;

    fn op(client: usize, call: u64, ret: u64, input: RegisterInput, output: RegisterOutput) -> Op {
        Operation { client, input, call, ret: Some(ret), output: Some(output) }
    }

    fn unknown(client: usize, call: u64, input: RegisterInput) -> Op {
        Operation { client, input, call, ret: None, output: None }
    }

    fn verdict(h: &[Op]) -> Verdict {
        check(&Register, h, 1_000_000)
    }

    #[test]
    fn an_empty_history_and_a_sequential_one_pass() {
        assert_eq!(verdict(&[]), Verdict::Linearizable);
        let h = [
            op(0, 0, 1, READ, seen(None)),
            op(0, 2, 3, Write(7), Written(1)),
            op(1, 4, 5, READ, seen(Some((7, 1)))),
            op(1, 6, 7, CompareAndSet { expected: 7, value: 8 }, Written(2)),
            op(0, 8, 9, CompareAndSet { expected: 7, value: 9 }, PreconditionFailed),
            op(0, 10, 11, READ, seen(Some((8, 2)))),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    #[test]
    fn overlapping_operations_may_take_effect_in_either_order() {
        // The write overlaps both reads: the first saw the old state, the second the new one.
        let h =
            [op(0, 0, 10, Write(1), Written(1)), op(1, 1, 3, READ, seen(None)), op(2, 4, 6, READ, seen(Some((1, 1))))];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        // Two concurrent writes answered versions 2 and 1: the later call went first.
        let h = [
            op(0, 0, 10, Write(1), Written(2)),
            op(1, 1, 9, Write(2), Written(1)),
            op(2, 11, 12, READ, seen(Some((1, 2)))),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_fails() {
        let h = [
            op(0, 0, 1, Write(1), Written(1)),
            op(0, 2, 3, Write(2), Written(2)),
            op(1, 4, 5, READ, seen(Some((1, 1)))),
        ];
        let v = verdict(&h);
        let Verdict::NotLinearizable { blocked, .. } = &v else { panic!("{v:?}") };
        assert_eq!(*blocked, 2, "{}", describe(&h, &v));
        assert!(describe(&h, &v).contains("<- blocked"));
    }

    #[test]
    fn a_lost_write_fails() {
        let h = [op(0, 0, 1, Write(1), Written(1)), op(1, 2, 3, READ, seen(None))];
        assert!(matches!(verdict(&h), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn a_compare_and_set_that_took_effect_twice_fails() {
        let h = [
            op(0, 0, 1, Write(1), Written(1)),
            op(1, 2, 6, CompareAndSet { expected: 1, value: 2 }, Written(2)),
            op(2, 3, 7, CompareAndSet { expected: 1, value: 3 }, Written(2)),
        ];
        assert!(matches!(verdict(&h), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn an_unknown_write_may_have_happened_or_not() {
        let observed =
            [unknown(0, 0, Write(5)), op(1, 3, 4, READ, seen(Some((5, 1)))), op(1, 5, 6, READ, seen(Some((5, 1))))];
        assert_eq!(verdict(&observed), Verdict::Linearizable);
        let never = [unknown(0, 0, Write(5)), op(1, 3, 4, READ, seen(None))];
        assert_eq!(verdict(&never), Verdict::Linearizable);
        // But once seen it cannot be unseen.
        let flicker = [unknown(0, 0, Write(5)), op(1, 3, 4, READ, seen(Some((5, 1)))), op(1, 5, 6, READ, seen(None))];
        assert!(matches!(verdict(&flicker), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn a_read_cannot_see_a_write_before_its_call() {
        let h = [op(1, 0, 1, READ, seen(Some((5, 1)))), op(0, 2, 3, Write(5), Written(1))];
        assert!(matches!(verdict(&h), Verdict::NotLinearizable { .. }));
    }

    /// Every order of the operations that respects real time (an operation that returned
    /// before another was called comes first), tried one by one.
    fn brute_force(h: &[Op]) -> bool {
        fn go(h: &[Op], used: &mut Vec<bool>, state: RegisterState) -> bool {
            if used.iter().all(|u| *u) {
                return true;
            }
            for i in 0..h.len() {
                if used[i] {
                    continue;
                }
                // Some unused operation returned before this one was called: not yet.
                let blocked = (0..h.len()).any(|j| !used[j] && j != i && h[j].ret.is_some_and(|r| r < h[i].call));
                if blocked {
                    continue;
                }
                if let Some(next) = Register.step(&state, &h[i].input, h[i].output.as_ref()) {
                    used[i] = true;
                    if go(h, used, next) {
                        return true;
                    }
                    used[i] = false;
                }
            }
            false
        }
        go(h, &mut vec![false; h.len()], None)
    }

    fn random_history(rng: &mut impl rand::Rng) -> Vec<Op> {
        let n = rng.random_range(1..=6);
        (0..n)
            .map(|i| {
                let call = rng.random_range(0..10u64);
                let ret = (rng.random_range(0..8u8) > 0).then(|| call + rng.random_range(0..5u64));
                let value = rng.random_range(1..4u64);
                let input = match rng.random_range(0..3u8) {
                    0 => READ,
                    1 => Write(value),
                    _ => CompareAndSet { expected: rng.random_range(1..4u64), value },
                };
                let output = ret.map(|_| match &input {
                    RegisterInput::Read => {
                        seen(rng.random_bool(0.8).then(|| (rng.random_range(1..4u64), rng.random_range(1..4u64))))
                    }
                    _ if rng.random_bool(0.3) => PreconditionFailed,
                    _ => Written(rng.random_range(1..4u64)),
                });
                Operation { client: i, input, call, ret, output }
            })
            .collect()
    }

    #[test]
    fn the_search_agrees_with_trying_every_order_on_random_small_histories() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (mut yes, mut no) = (0, 0);
        for _ in 0..20_000 {
            let h = random_history(&mut rng);
            let expected = brute_force(&h);
            let got = check(&Register, &h, 1_000_000);
            assert_eq!(got == Verdict::Linearizable, expected, "{h:#?} gave {got:?}");
            let pruned = check_register(&h, 1_000_000);
            assert_eq!(pruned == Verdict::Linearizable, expected, "pruned: {h:#?} gave {pruned:?}");
            if expected { yes += 1 } else { no += 1 }
        }
        assert!(yes > 1000 && no > 1000, "both verdicts drawn: {yes} / {no}");
    }

    #[test]
    fn operations_that_touch_at_an_instant_count_as_concurrent() {
        // The read is called at the instant the write returns: it may still precede it.
        let h = [op(0, 0, 5, Write(1), Written(1)), op(1, 5, 6, READ, seen(None))];
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    #[test]
    fn a_compare_and_set_on_an_absent_key_fails_its_precondition() {
        let h =
            [op(0, 0, 1, CompareAndSet { expected: 1, value: 2 }, PreconditionFailed), op(0, 2, 3, READ, seen(None))];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        let wrong = [op(0, 0, 1, CompareAndSet { expected: 1, value: 2 }, Written(1))];
        assert!(matches!(verdict(&wrong), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn an_answer_before_its_call_is_refused() {
        let h = [op(0, 5, 4, READ, seen(None))];
        assert!(matches!(verdict(&h), Verdict::Invalid { .. }));
    }

    #[test]
    fn the_report_shows_what_made_the_state_a_stale_read_saw() {
        let h = [
            op(0, 0, 1, Write(1), Written(1)),
            op(0, 2, 3, Write(2), Written(2)),
            op(1, 4, 5, READ, seen(Some((1, 1)))),
        ];
        let text = describe(&h, &verdict(&h));
        assert!(text.contains("Write(2)"), "{text}");
        assert!(text.contains("Some((2, 2))"), "{text}");
    }

    #[test]
    fn many_concurrent_writers_are_decided_within_the_budget() {
        // 12 clients each write once, all overlapping; reads after see the one with version 12.
        let mut h: Vec<Op> =
            (0..12).map(|c| op(c, c as u64, 100 + c as u64, Write(c as u64), Written(12 - c as u64))).collect();
        h.push(op(0, 200, 201, READ, seen(Some((0, 12)))));
        assert_eq!(verdict(&h), Verdict::Linearizable);
        assert!(matches!(check(&Register, &h, 3), Verdict::GaveUp { .. }));
    }
}
