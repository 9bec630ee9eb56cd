//! The UDP fast path: answers prepared per (name, type) whenever the catalog changes, so a
//! query costs a parse of its question, a table lookup and a copy.
//!
//! A prepared answer is a whole encoded response (ID 0, lower-case question); answering copies
//! it, sets the query's ID and RD bit, and copies the query's question over the prepared one
//! (same length: the names differ at most in case, and answer names point at it). Answers with
//! several records are prepared in several rotations, one picked per query, so clients see the
//! instances in varying order. Anything else (other types, classes, opcodes, unknown names)
//! goes through [`crate::lookup`] and hickory-proto's encoder.

use std::collections::HashMap;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use skiff_catalog::Snapshot;

use crate::lookup::{Answer, Zone, lookup, names};

/// Orders prepared for answers with several records: every record comes first in one of
/// them (with more records than this, evenly spaced ones do).
const ROTATIONS: usize = 32;
/// OPT record appended when the query had EDNS: root name, type 41, payload 1232, no flags.
const OPT: [u8; 11] = [0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0];
const HEADER: usize = 12;

/// Prepared answers for one catalog snapshot.
#[derive(Default)]
pub struct Prepared {
    table: HashMap<(Vec<u8>, u16), Vec<Variant>>,
}

/// One rotation of an answer: whole, and without the additional section (used when the whole
/// one does not fit; additional records may be left out without truncating).
struct Variant {
    full: Vec<u8>,
    lean: Option<Vec<u8>>,
}

impl Variant {
    fn new(name: &Name, qtype: RecordType, answer: &Answer) -> Option<Variant> {
        let full = encode(name, qtype, answer)?;
        let lean = if answer.additionals.is_empty() {
            None
        } else {
            let mut a = answer.clone();
            a.additionals.clear();
            encode(name, qtype, &a)
        };
        Some(Variant { full, lean })
    }

    /// The fullest encoding within `limit` bytes, else the full one (to be truncated).
    fn fitting(&self, limit: usize) -> &[u8] {
        match &self.lean {
            Some(lean) if self.full.len() > limit => lean,
            _ => &self.full,
        }
    }
}

/// A question's name in lower-case wire form and its end offset, if it is a plain one.
fn question(query: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut key = Vec::with_capacity(64);
    let mut i = HEADER;
    loop {
        let len = usize::from(*query.get(i)?);
        if len == 0 {
            key.push(0);
            i += 1;
            break;
        }
        // A compression pointer or an extended label: not in a plain question.
        if len > 63 {
            return None;
        }
        let label = query.get(i..=i + len)?;
        key.extend(label.iter().map(u8::to_ascii_lowercase));
        i += len + 1;
        if key.len() > 255 {
            return None;
        }
    }
    Some((key, i))
}

fn wire_name(name: &Name) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out
}

/// Encodes `answer` to a question (ID 0, RD clear, no EDNS).
fn encode(name: &Name, qtype: RecordType, answer: &Answer) -> Option<Vec<u8>> {
    let mut m = Message::new(0, MessageType::Response, OpCode::Query);
    m.metadata.authoritative = answer.rcode != ResponseCode::Refused;
    m.metadata.response_code = answer.rcode;
    m.add_query(Query::query(name.clone(), qtype));
    m.insert_answers(answer.answers.clone());
    m.insert_authorities(answer.authorities.clone());
    m.insert_additionals(answer.additionals.clone());
    m.to_vec().ok()
}

impl Prepared {
    /// Every answer in random orders: a random order rotated so that each record (or, past
    /// [`ROTATIONS`], evenly spaced ones) comes first once, the rest shuffled behind it.
    pub fn build(snap: &Snapshot, zone: &Zone, rng: &mut fastrand::Rng) -> Prepared {
        let mut table = HashMap::new();
        for (name, qtype) in names(snap, zone) {
            let mut answer = lookup(snap, zone, &name, qtype);
            rng.shuffle(&mut answer.answers);
            let n = answer.answers.len();
            let k = n.clamp(1, ROTATIONS);
            let variants: Vec<Variant> = (0..k)
                .filter_map(|r| {
                    let mut a = answer.clone();
                    a.answers.rotate_left(r * n / k);
                    if let Some(rest) = a.answers.get_mut(1..) {
                        rng.shuffle(rest);
                    }
                    rng.shuffle(&mut a.additionals);
                    Variant::new(&name, qtype, &a)
                })
                .collect();
            if !variants.is_empty() {
                table.insert((wire_name(&name), u16::from(qtype)), variants);
            }
        }
        Prepared { table }
    }
}

/// Writes the response to `query` into `out`; `false` when nothing should be sent (not a
/// query, or too broken to answer). `pick` chooses the rotation.
pub fn respond(
    query: &[u8],
    prepared: &Prepared,
    snap: &Snapshot,
    zone: &Zone,
    pick: usize,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    if query.len() < HEADER || query[2] & 0x80 != 0 {
        return false;
    }
    let plain = (query[2] >> 3) & 0x0f == 0 && query[4..6] == [0, 1];
    let edns = query[10..12] != [0, 0];
    if plain && let Some((key, qend)) = question(query) {
        let (Some(qtype), Some(class)) = (query.get(qend..qend + 2), query.get(qend + 2..qend + 4))
        else {
            return false;
        };
        let qtype = u16::from_be_bytes([qtype[0], qtype[1]]);
        if class == [0, 1]
            && let Some(variants) = prepared.table.get(&(key, qtype))
        {
            out.extend_from_slice(variants[pick % variants.len()].fitting(limit(edns)));
            out[0..2].copy_from_slice(&query[0..2]);
            out[2] = (out[2] & !0x01) | (query[2] & 0x01);
            out[HEADER..qend + 4].copy_from_slice(&query[HEADER..qend + 4]);
            finish(out, qend + 4, edns);
            return true;
        }
    }
    slow(query, snap, zone, out, edns)
}

/// Bytes a response may take before the OPT record.
fn limit(edns: bool) -> usize {
    if edns { 1232 - OPT.len() } else { 512 }
}

/// Appends OPT when the query had EDNS; truncates what does not fit the client's limit.
fn finish(out: &mut Vec<u8>, question_end: usize, edns: bool) {
    if out.len() > limit(edns) {
        out.truncate(question_end);
        out[2] |= 0x02;
        out[6..12].fill(0);
    }
    if edns {
        out.extend_from_slice(&OPT);
        let ar = u16::from_be_bytes([out[10], out[11]]) + 1;
        out[10..12].copy_from_slice(&ar.to_be_bytes());
    }
}

/// Every other query: decoded and encoded by hickory-proto.
fn slow(query: &[u8], snap: &Snapshot, zone: &Zone, out: &mut Vec<u8>, edns: bool) -> bool {
    let id = u16::from_be_bytes([query[0], query[1]]);
    let rd = query[2] & 0x01;
    let msg = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => {
            // Echo the header with FORMERR.
            let m = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
            if let Ok(bytes) = m.to_vec() {
                out.extend_from_slice(&bytes);
            }
            return !out.is_empty();
        }
    };
    let reply = |code: ResponseCode, out: &mut Vec<u8>| {
        let mut m = Message::error_msg(id, msg.metadata.op_code, code);
        for q in &msg.queries {
            m.add_query(q.clone());
        }
        if let Ok(bytes) = m.to_vec() {
            out.extend_from_slice(&bytes);
        }
    };
    if msg.metadata.op_code != OpCode::Query {
        reply(ResponseCode::NotImp, out);
    } else if msg.queries.len() != 1 {
        reply(ResponseCode::FormErr, out);
    } else {
        let q = &msg.queries[0];
        let answer = if q.query_class() == hickory_proto::rr::DNSClass::IN {
            let mut a = lookup(snap, zone, q.name(), q.query_type());
            fastrand::shuffle(&mut a.answers);
            a
        } else {
            Answer::new(ResponseCode::Refused)
        };
        let Some(v) = Variant::new(q.name(), q.query_type(), &answer) else {
            reply(ResponseCode::ServFail, out);
            return true;
        };
        out.extend_from_slice(v.fitting(limit(edns)));
        out[0..2].copy_from_slice(&id.to_be_bytes());
        out[2] |= rd;
        let qend = question(out).map_or(HEADER, |(_, end)| end + 4);
        finish(out, qend, edns);
        return true;
    }
    if let Some(flags) = out.get_mut(2) {
        *flags |= rd;
    }
    !out.is_empty()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use hickory_proto::rr::RData;
    use skiff_catalog::{Catalog, ServiceInfo, ServiceKey};
    use skiff_model::{InstanceId, StackKey};

    use super::*;

    pub(super) fn snapshot(n: u32) -> Snapshot {
        let c = Catalog::default();
        let stack = StackKey::new("default", "shop").unwrap();
        c.set_services(BTreeMap::from([(
            ServiceKey::new(&stack, "web"),
            ServiceInfo::with_ports(&["http"]),
        )]));
        for i in 1..=n {
            c.add(
                &InstanceId {
                    stack: stack.clone(),
                    service: "web".into(),
                    index: i,
                },
                format!("127.0.0.{i}").parse().unwrap(),
                BTreeMap::from([("http".into(), 4000 + i as u16)]),
            );
        }
        (*c.snapshot()).clone()
    }

    fn query(id: u16, name: &str, t: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if edns {
            m.set_edns(hickory_proto::op::Edns::new());
        }
        m.to_vec().unwrap()
    }

    fn ask(snap: &Snapshot, q: &[u8], pick: usize) -> Message {
        let zone = Zone::new("skiff", 0).unwrap();
        let prepared = Prepared::build(snap, &zone, &mut fastrand::Rng::with_seed(7));
        let mut out = Vec::new();
        assert!(respond(q, &prepared, snap, &zone, pick, &mut out));
        Message::from_vec(&out).unwrap()
    }

    /// The first A record of the answer in order `pick`.
    fn first_address(snap: &Snapshot, q: &[u8], pick: usize) -> String {
        match &ask(snap, q, pick).answers[0].data {
            RData::A(a) => a.0.to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_prepared_answer_carries_the_query_id_case_and_rd() {
        let snap = snapshot(3);
        let r = ask(
            &snap,
            &query(0xbeef, "WEB.shop.default.skiff.", RecordType::A, false),
            0,
        );
        assert_eq!(r.metadata.id, 0xbeef);
        assert!(r.metadata.recursion_desired && r.metadata.authoritative);
        assert_eq!(r.queries[0].name().to_ascii(), "WEB.shop.default.skiff.");
        assert_eq!(r.answers.len(), 3);
    }

    #[test]
    fn rotations_vary_the_order_of_records() {
        let snap = snapshot(3);
        let q = query(1, "web.shop.default.skiff.", RecordType::A, false);
        let seen: std::collections::BTreeSet<String> =
            (0..3).map(|pick| first_address(&snap, &q, pick)).collect();
        assert_eq!(seen.len(), 3, "{seen:?}");
    }

    #[test]
    fn past_the_prepared_orders_evenly_spaced_records_come_first() {
        let snap = snapshot(60);
        let q = query(1, "web.shop.default.skiff.", RecordType::A, true);
        let seen: std::collections::BTreeSet<String> = (0..ROTATIONS)
            .map(|pick| first_address(&snap, &q, pick))
            .collect();
        assert_eq!(seen.len(), ROTATIONS, "{seen:?}");
    }

    #[test]
    fn edns_queries_get_opt_and_large_answers_are_truncated_without_it() {
        let snap = snapshot(20);
        let r = ask(
            &snap,
            &query(7, "web.shop.default.skiff.", RecordType::SRV, false),
            0,
        );
        assert!(r.metadata.truncation && r.answers.is_empty());
        // 20 SRV fit in 1232 bytes, their targets' addresses as well only in part: the
        // additional section goes, the answer stays whole.
        let r = ask(
            &snap,
            &query(7, "web.shop.default.skiff.", RecordType::SRV, true),
            0,
        );
        assert!(!r.metadata.truncation);
        assert_eq!(r.answers.len(), 20);
        assert!(r.edns.is_some());
        let snap = snapshot(5);
        let r = ask(
            &snap,
            &query(7, "web.shop.default.skiff.", RecordType::SRV, false),
            0,
        );
        assert_eq!((r.answers.len(), r.additionals.len()), (5, 5));
        assert!(r.edns.is_none());
    }

    #[test]
    fn misses_go_the_slow_way_with_the_same_rules() {
        let snap = snapshot(1);
        let r = ask(
            &snap,
            &query(9, "nope.shop.default.skiff.", RecordType::A, true),
            0,
        );
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(r.metadata.id, 9);
        assert!(r.edns.is_some());
        let r = ask(&snap, &query(9, "example.com.", RecordType::A, false), 0);
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
        let r = ask(
            &snap,
            &query(9, "web.shop.default.skiff.", RecordType::TXT, false),
            0,
        );
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty() && r.authorities.len() == 1);
    }

    #[test]
    fn garbage_gets_formerr_or_silence_never_a_panic() {
        let snap = snapshot(1);
        let zone = Zone::new("skiff", 0).unwrap();
        let prepared = Prepared::build(&snap, &zone, &mut fastrand::Rng::new());
        let mut out = Vec::new();
        let mut rng = 0x1234_5678u32;
        for len in 0..600 {
            let q: Vec<u8> = (0..len)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 17;
                    rng ^= rng << 5;
                    rng as u8
                })
                .collect();
            respond(&q, &prepared, &snap, &zone, len, &mut out);
        }
        // A truncated question of a real query.
        let q = query(3, "web.shop.default.skiff.", RecordType::A, false);
        for cut in 0..q.len() {
            respond(&q[..cut], &prepared, &snap, &zone, 0, &mut out);
        }
    }
}
