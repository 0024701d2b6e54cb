//! Binary encoding of records and log entries in the redb journal.
//!
//! Record: `create_rev i64 | mod_rev i64 | version i64 | lease i64 | value`.
//! Log entry (all events of one revision): `count u32`, then per event
//! `kind u8 | key_len u32 | key | rec_len u32 | record | prev_len u32 | prev`
//! where a length of `u32::MAX` means "absent" (for `prev` of a created key).
//! Every decode checks lengths: a damaged file gives [`StoreError::Corrupt`].

use bytes::Bytes;

use crate::types::{Event, EventKind, KeyValue, StoreError};

const HEADER: usize = 32;

pub(crate) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt {
        path: String::new(),
        reason: format!("damaged {what}"),
    }
}

pub(crate) fn encode_record(kv: &KeyValue, out: &mut Vec<u8>) {
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.version.to_le_bytes());
    out.extend_from_slice(&kv.lease.to_le_bytes());
    out.extend_from_slice(&kv.value);
}

fn i64_at(buf: &[u8], at: usize) -> Result<i64, StoreError> {
    let bytes: [u8; 8] = buf
        .get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| corrupt("record header"))?;
    Ok(i64::from_le_bytes(bytes))
}

pub(crate) fn decode_record(key: &[u8], buf: &[u8]) -> Result<KeyValue, StoreError> {
    if buf.len() < HEADER {
        return Err(corrupt("record"));
    }
    Ok(KeyValue {
        key: Bytes::copy_from_slice(key),
        create_revision: i64_at(buf, 0)?,
        mod_revision: i64_at(buf, 8)?,
        version: i64_at(buf, 16)?,
        lease: i64_at(buf, 24)?,
        value: Bytes::copy_from_slice(&buf[HEADER..]),
    })
}

/// The lease field of an encoded record, without decoding the value.
pub(crate) fn record_lease(buf: &[u8]) -> Result<i64, StoreError> {
    i64_at(buf, 24)
}

/// One change as logged: the event plus the record it replaced.
#[derive(Debug, Clone)]
pub(crate) struct LoggedEvent {
    pub event: Event,
    pub prev: Option<KeyValue>,
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
        None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
}

pub(crate) fn encode_log(events: &[LoggedEvent]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * events.len());
    out.extend_from_slice(&(events.len() as u32).to_le_bytes());
    let mut rec = Vec::new();
    for e in events {
        out.push(match e.event.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        });
        put_bytes(&mut out, Some(&e.event.kv.key));
        rec.clear();
        encode_record(&e.event.kv, &mut rec);
        put_bytes(&mut out, Some(&rec));
        rec.clear();
        let prev = e.prev.as_ref().map(|p| {
            encode_record(p, &mut rec);
            rec.as_slice()
        });
        put_bytes(&mut out, prev);
    }
    out
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Result<u32, StoreError> {
        let b: [u8; 4] = self
            .buf
            .get(self.at..self.at + 4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| corrupt("log entry"))?;
        self.at += 4;
        Ok(u32::from_le_bytes(b))
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        let b = *self.buf.get(self.at).ok_or_else(|| corrupt("log entry"))?;
        self.at += 1;
        Ok(b)
    }

    fn bytes(&mut self) -> Result<Option<&'a [u8]>, StoreError> {
        let len = self.u32()?;
        if len == u32::MAX {
            return Ok(None);
        }
        let len = len as usize;
        let s = self
            .buf
            .get(self.at..self.at + len)
            .ok_or_else(|| corrupt("log entry"))?;
        self.at += len;
        Ok(Some(s))
    }
}

pub(crate) fn decode_log(buf: &[u8]) -> Result<Vec<LoggedEvent>, StoreError> {
    let mut r = Reader { buf, at: 0 };
    let n = r.u32()? as usize;
    let mut out = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let kind = match r.u8()? {
            0 => EventKind::Put,
            1 => EventKind::Delete,
            _ => return Err(corrupt("log event kind")),
        };
        let key = r.bytes()?.ok_or_else(|| corrupt("log key"))?;
        let rec = r.bytes()?.ok_or_else(|| corrupt("log record"))?;
        let kv = decode_record(key, rec)?;
        let prev = r.bytes()?.map(|p| decode_record(key, p)).transpose()?;
        out.push(LoggedEvent {
            event: Event { kind, kv },
            prev,
        });
    }
    if r.at != buf.len() {
        return Err(corrupt("log entry (trailing bytes)"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            create_revision: 2,
            mod_revision: rev,
            version: 3,
            lease: 7,
        }
    }

    #[test]
    fn log_round_trips_and_detects_damage() {
        let events = vec![
            LoggedEvent {
                event: Event {
                    kind: EventKind::Put,
                    kv: kv("/a", "1", 5),
                },
                prev: Some(kv("/a", "0", 4)),
            },
            LoggedEvent {
                event: Event {
                    kind: EventKind::Delete,
                    kv: kv("/b", "", 5),
                },
                prev: None,
            },
        ];
        let buf = encode_log(&events);
        let back = decode_log(&buf).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].event, events[0].event);
        assert_eq!(back[0].prev, events[0].prev);
        assert_eq!(back[1].prev, None);
        assert!(decode_log(&buf[..buf.len() - 3]).is_err());
        assert!(decode_record(b"k", &[0; 10]).is_err());
    }
}
