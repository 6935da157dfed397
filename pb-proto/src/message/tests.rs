//! Envelope round trips and hostile inputs.

use super::*;

/// A call's extras with every field set.
fn full_extras() -> CallExtras {
    CallExtras {
        signature: Some(Signature {
            params: 0xdead_beef,
            result: 7,
        }),
        trace: TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    }
}

fn rt(m: Message) {
    let mut out = BytesMut::new();
    m.encode(&mut out);
    assert_eq!(
        Message::decode(out.freeze(), &MessageLimits::default()),
        Ok(m)
    );
}

#[test]
fn a_damaged_call_envelope_never_points_outside_its_body() {
    let m = Message::Call {
        id: 1 << 40,
        target: 300,
        method: Bytes::from_static("méthode".as_bytes()),
        answer: true,
        deadline_ms: Some(1500),
        extras: full_extras(),
        refs: vec![RefDesc::Sender(7), RefDesc::Receiver(300)],
        payload: Bytes::from_static(b"payload"),
    };
    let mut out = BytesMut::new();
    m.encode(&mut out);
    let whole = out.freeze();
    let limits = MessageLimits::default();
    let check = |body: &[u8]| {
        if let Ok(head) = decode_call_head(body, &limits) {
            assert!(head.method.end <= head.payload_at && head.payload_at <= body.len());
            assert!(std::str::from_utf8(&body[head.method.clone()]).is_ok());
        }
        let _ = Message::decode(Bytes::copy_from_slice(body), &limits);
    };
    for cut in 0..=whole.len() {
        check(&whole[..cut]);
    }
    for at in 0..whole.len() {
        for byte in [0x00, 0x01, 0x7f, 0x80, 0xc3, 0xff] {
            let mut body = whole.to_vec();
            body[at] = byte;
            check(&body);
        }
    }
}

#[test]
fn a_call_frame_head_matches_the_message_encoding() {
    let method = "m".repeat(MAX_METHOD_LEN);
    for (refs, deadline_ms, method, extras) in [
        (vec![], None, "echo", CallExtras::default()),
        (vec![], Some(1500), method.as_str(), full_extras()),
        (
            vec![RefDesc::Sender(7), RefDesc::Receiver(300)],
            None,
            method.as_str(),
            full_extras(),
        ),
    ] {
        let payload = Bytes::from_static(b"payload");
        let m = Message::Call {
            id: 1 << 40,
            target: 12,
            method: Bytes::copy_from_slice(method.as_bytes()),
            answer: true,
            deadline_ms,
            extras,
            refs: refs.clone(),
            payload: payload.clone(),
        };
        let expected = framed(&m);
        // Written after what the output already holds.
        let mut out = BytesMut::from(&b"before"[..]);
        encode_call_frame_head(
            &mut out,
            payload.len(),
            1 << 40,
            12,
            method.as_bytes(),
            (true, deadline_ms, &extras),
            &refs,
        );
        out.put_slice(&payload);
        assert_eq!(&out[..6], b"before");
        assert_eq!(&out[6..], &expected[..]);
    }
}

/// `m` encoded as a whole frame, length prefix first.
fn framed(m: &Message) -> BytesMut {
    let mut body = BytesMut::new();
    m.encode(&mut body);
    let mut frame = BytesMut::new();
    frame.put_u32(body.len() as u32);
    frame.put_slice(&body);
    frame
}

#[test]
fn an_answer_frame_head_matches_the_message_encoding() {
    for (id, ok) in [(1, true), (1 << 40, false)] {
        let payload = Bytes::from_static(b"payload");
        let m = Message::Answer {
            id,
            ok,
            refs: vec![],
            payload: payload.clone(),
        };
        let expected = framed(&m);
        let mut out = BytesMut::new();
        encode_answer_frame_head(&mut out, id, ok, payload.len());
        out.put_slice(&payload);
        assert_eq!(out, expected);
    }
}

#[test]
fn round_trips() {
    for extras in [
        CallExtras::default(),
        full_extras(),
        CallExtras {
            signature: None,
            ..full_extras()
        },
    ] {
        rt(Message::Call {
            id: u64::MAX,
            target: 300,
            method: Bytes::from_static(b"echo"),
            answer: true,
            deadline_ms: Some(1500),
            extras,
            refs: vec![RefDesc::Sender(1), RefDesc::Receiver(0)],
            payload: Bytes::from_static(b"\x01\x02"),
        });
    }
    rt(Message::Answer {
        id: 7,
        ok: false,
        refs: vec![],
        payload: Bytes::new(),
    });
    rt(Message::Fault {
        id: 9,
        kind: FaultKind::NoSuchMethod,
        message: "no method nope".into(),
    });
    rt(Message::Release(vec![(1, 2), (3, u64::MAX)]));
    rt(Message::Cancel { id: 12 });
    rt(Message::Goodbye);
    rt(Message::Revoked { object: 77 });
    rt(Message::Update {
        object: 3,
        payload: Bytes::from_static(b"\x00\x01"),
    });
    rt(Message::Ping { nonce: 0 });
    rt(Message::Pong { nonce: u64::MAX });
    rt(Message::Limits(ReceiveLimits {
        max_frame_len: 1 << 20,
        max_refs_per_message: 0,
        max_release_entries: 300,
        max_call_bytes: None,
    }));
    rt(Message::Limits(ReceiveLimits {
        max_frame_len: 1 << 20,
        max_refs_per_message: 0,
        max_release_entries: 300,
        max_call_bytes: Some(1 << 26),
    }));
    rt(Message::Credit { bytes: 0 });
    rt(Message::Credit { bytes: u64::MAX });
    rt(Message::Fault {
        id: 9,
        kind: FaultKind::Cancelled,
        message: String::new(),
    });
}

#[test]
fn hostile_inputs_are_errors() {
    let l = MessageLimits::default();
    assert_eq!(
        Message::decode(Bytes::from_static(&[99]), &l),
        Err(MessageError::UnknownTag(99))
    );
    assert_eq!(
        Message::decode(Bytes::new(), &l),
        Err(MessageError::Truncated)
    );
    // A release claiming 4000 entries with no bytes behind it allocates nothing.
    assert_eq!(
        Message::decode(Bytes::from_static(&[4, 0xa0, 0x1f]), &l),
        Err(MessageError::Truncated)
    );
    // An 11-byte varint overflows.
    assert_eq!(
        Message::decode(
            Bytes::from_static(&[
                5, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f
            ]),
            &l
        ),
        Err(MessageError::IntegerOverflow)
    );
    assert!(matches!(
        Message::decode(Bytes::from_static(&[1, 1, 1, 0, 0x80, 0x02]), &l),
        Err(MessageError::TooLong { .. })
    ));
}

#[test]
fn the_ids_of_calls_and_cancels_are_read_from_their_bodies() {
    let body = |m: &Message| {
        let mut out = BytesMut::new();
        m.encode(&mut out);
        out
    };
    for (id, answer, deadline_ms) in [
        (1, true, None),
        (1 << 40, false, Some(5)),
        (u64::MAX, true, None),
    ] {
        let call = body(&Message::Call {
            id,
            target: 3,
            method: Bytes::from_static(b"m"),
            answer,
            deadline_ms,
            extras: full_extras(),
            refs: vec![],
            payload: Bytes::new(),
        });
        assert_eq!((call_id(&call), cancelled_id(&call)), (Some(id), None));
        let cancel = body(&Message::Cancel { id });
        assert_eq!((call_id(&cancel), cancelled_id(&cancel)), (None, Some(id)));
    }
    let other = body(&Message::Goodbye);
    assert_eq!((call_id(&other), cancelled_id(&other)), (None, None));
    // Cut short: no id.
    assert_eq!(call_id(&[TAG_CALL]), None);
    assert_eq!(call_id(&[TAG_CALL, 0, 0x80]), None);
    assert_eq!(cancelled_id(&[TAG_CANCEL]), None);
    assert_eq!(call_id(&[]), None);
}
