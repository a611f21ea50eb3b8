//! The per-packet decisions, without sockets or a TUN: a real [`State`] and real
//! boringtun `Tunn`s ([`Rig`]).

use std::time::Duration;

use super::fuzz;
use super::rig::{ipv4, ipv6, Opened, Rig, KEEPALIVE, PEER2_ADDR, REMOTE_ADDR, ROAMED_ADDR};
use super::*;
use crate::device::DeviceCounters;

const PEER1_V4: [u8; 4] = [10, 9, 0, 2];
const PEER2_V4: [u8; 4] = [10, 9, 1, 5];
const NOBODY_V4: [u8; 4] = [192, 0, 2, 99];
const DEVICE_V4: [u8; 4] = [10, 9, 0, 1];
const PEER1_V6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const DEVICE_V6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

fn counters(rig: &Rig) -> DeviceCounters {
    rig.counters.snapshot()
}

/// A message of `kind` and `len` bytes, zero but for its type.
fn message(kind: u8, len: usize) -> Vec<u8> {
    let mut m = vec![0u8; len];
    if let Some(b) = m.first_mut() {
        *b = kind;
    }
    m
}

/// A data message for the peer of `index` (24 bits), with garbage after the header.
fn data_for(index: u32, len: usize) -> Vec<u8> {
    let mut m = message(4, len);
    m[4..8].copy_from_slice(&(index << 8 | 1).to_le_bytes());
    m[16..]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = i as u8);
    m
}

#[test]
fn handshake_messages_of_their_size_go_to_the_handshake_thread() {
    let mut rig = Rig::new();
    let mut buf = [0u8; 256];
    let TunnResult::WriteToNetwork(init) = rig.remote.format_handshake_initiation(&mut buf, false)
    else {
        panic!("no initiation");
    };
    let init = init.to_vec();
    for m in [init, message(2, 92), message(3, 64)] {
        let r = rig.receive(REMOTE_ADDR, &m);
        assert_eq!(r.verdict, Datagram::Handshake, "type {}", m[0]);
        assert!(r.delivered.is_none());
    }
    assert_eq!(counters(&rig), DeviceCounters::default(), "nothing counted");
    assert_eq!(
        rig.peer(1).lock().endpoint,
        None,
        "not authenticated: no roaming"
    );
}

#[test]
fn anything_else_of_the_wrong_size_or_type_is_an_invalid_datagram() {
    let mut rig = Rig::new();
    let mut bad: Vec<Vec<u8>> = (0..8).map(|len| message(4, len)).collect();
    bad.extend([
        message(1, 147),
        message(1, 149),
        message(1, 92),
        message(2, 148),
        message(2, 93),
        message(3, 63),
        message(3, 148),
        message(0, 148),
        message(5, 64),
        message(0xff, 32),
    ]);
    // The type is a 32-bit word: 4 with a high byte set is no data message.
    let mut high = data_for(1, 64);
    high[3] = 1;
    bad.push(high);
    for m in &bad {
        let r = rig.receive(REMOTE_ADDR, m);
        assert_eq!(
            r.verdict,
            Datagram::Dropped(DropReason::Invalid),
            "{m:02x?}"
        );
    }
    let c = counters(&rig);
    assert_eq!(c.invalid_datagrams, bad.len() as u64);
    assert_eq!(
        DeviceCounters {
            invalid_datagrams: 0,
            ..c
        },
        DeviceCounters::default()
    );
}

#[test]
fn a_data_message_for_an_unknown_index_is_counted_as_such() {
    let mut rig = Rig::established();
    let unknown = (rig.peer(1).index + 100) & 0x00ff_ffff;
    let r = rig.receive(REMOTE_ADDR, &data_for(unknown, 64));
    assert_eq!(r.verdict, Datagram::Dropped(DropReason::UnknownIndex));
    assert_eq!(counters(&rig).unknown_index, 1);
}

#[test]
fn a_data_message_that_does_not_decrypt_is_counted_as_such() {
    let mut rig = Rig::new();
    let index = rig.peer(1).index;
    // No session yet.
    let r = rig.receive(REMOTE_ADDR, &data_for(index, 64));
    assert_eq!(r.verdict, Datagram::Dropped(DropReason::DecryptFailed));

    rig.handshake();
    // Garbage under a known index, a genuine datagram with one bit flipped, a replay.
    let genuine = rig
        .seal(&ipv4(PEER1_V4, DEVICE_V4, b"hello"))
        .expect("sealed");
    let mut flipped = genuine.clone();
    flipped[20] ^= 1;
    for d in [data_for(index, 64), flipped] {
        let r = rig.receive(REMOTE_ADDR, &d);
        assert_eq!(r.verdict, Datagram::Dropped(DropReason::DecryptFailed));
    }
    assert!(matches!(
        rig.receive(REMOTE_ADDR, &genuine).verdict,
        Datagram::Deliver(_)
    ));
    let r = rig.receive(REMOTE_ADDR, &genuine);
    assert_eq!(r.verdict, Datagram::Dropped(DropReason::DecryptFailed));
    let c = counters(&rig);
    assert_eq!((c.decrypt_failed, c.unknown_index), (4, 0));
    assert_eq!(
        rig.peer(1).lock().endpoint,
        Some(REMOTE_ADDR),
        "failures move nothing"
    );
}

#[test]
fn an_authentic_packet_from_an_allowed_source_is_delivered_byte_for_byte() {
    let mut rig = Rig::established();
    let rx_before = rig
        .peer(1)
        .rx_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    for packet in [
        ipv4(PEER1_V4, DEVICE_V4, b"ping over v4"),
        ipv6(PEER1_V6, DEVICE_V6, b"ping over v6"),
    ] {
        let datagram = rig.seal(&packet).expect("sealed");
        let r = rig.receive(REMOTE_ADDR, &datagram);
        assert!(matches!(r.verdict, Datagram::Deliver(_)), "{:?}", r.verdict);
        assert_eq!(r.delivered, Some(packet));
        assert!(rig.rx.sends.is_empty(), "nothing to send for data");
    }
    assert_eq!(counters(&rig), DeviceCounters::default());
    let rx = rig
        .peer(1)
        .rx_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(rx > rx_before, "received bytes counted");
}

#[test]
fn an_authentic_packet_from_another_peers_or_no_peers_source_is_dropped() {
    let mut rig = Rig::established();
    for src in [PEER2_V4, NOBODY_V4] {
        let datagram = rig.seal(&ipv4(src, DEVICE_V4, b"spoofed")).expect("sealed");
        let r = rig.receive(REMOTE_ADDR, &datagram);
        assert_eq!(r.verdict, Datagram::Dropped(DropReason::DisallowedSource));
        assert!(r.delivered.is_none());
    }
    let c = counters(&rig);
    assert_eq!((c.disallowed_source, c.decrypt_failed), (2, 0));
}

#[test]
fn an_authentic_ipv4_packet_shorter_than_its_header_is_dropped() {
    let mut rig = Rig::established();
    let mut packet = ipv4(PEER1_V4, DEVICE_V4, b"cut short");
    // The total length says 16 bytes: `Tunn` trims the packet there, inside the
    // 20-byte header (the source it checks is still read from the whole packet).
    packet[2..4].copy_from_slice(&16u16.to_be_bytes());
    let datagram = rig.seal(&packet).expect("sealed");
    let r = rig.receive(REMOTE_ADDR, &datagram);
    assert_eq!(r.verdict, Datagram::Dropped(DropReason::Malformed));
    assert!(r.delivered.is_none());
    // An IHL longer than the packet is refused too.
    let mut packet = ipv4(PEER1_V4, DEVICE_V4, b"");
    packet[0] = 0x4f;
    let datagram = rig.seal(&packet).expect("sealed");
    let r = rig.receive(REMOTE_ADDR, &datagram);
    assert_eq!(r.verdict, Datagram::Dropped(DropReason::Malformed));
    let c = counters(&rig);
    assert_eq!((c.malformed_packets, c.disallowed_source), (2, 0));
}

#[test]
fn a_delivered_packet_from_a_new_address_moves_the_endpoint() {
    let mut rig = Rig::established();
    assert_eq!(rig.peer(1).lock().endpoint, Some(REMOTE_ADDR));
    // Garbage from elsewhere moves nothing.
    let index = rig.peer(1).index;
    rig.receive(ROAMED_ADDR, &data_for(index, 64));
    assert_eq!(rig.peer(1).lock().endpoint, Some(REMOTE_ADDR));

    rig.now += Duration::from_secs(3);
    let packet = ipv4(PEER1_V4, DEVICE_V4, b"from a new network");
    let datagram = rig.seal(&packet).expect("sealed");
    let r = rig.receive(ROAMED_ADDR, &datagram);
    assert_eq!(r.delivered, Some(packet));
    let inner = rig.peer(1).lock();
    assert_eq!(inner.endpoint, Some(ROAMED_ADDR));
    assert_eq!(inner.last_traversal, Some(rig.now));
}

#[test]
fn tun_packets_without_a_destination_route_or_endpoint_are_dropped_and_counted() {
    let rig = Rig::new();
    let mut out = vec![0u8; 2048];
    let mut seal = |p: &[u8]| handle_tun(&rig.state, &rig.counters, p, &mut out, rig.now).is_none();
    // Not IP.
    assert!(seal(&[]));
    assert!(seal(&[0x45; 19]));
    assert!(seal(&[0x75; 40]));
    // No peer has 10.8.0.1.
    assert!(seal(&ipv4(DEVICE_V4, [10, 8, 0, 1], b"x")));
    // Peer 1 has no endpoint yet.
    assert!(seal(&ipv4(DEVICE_V4, PEER1_V4, b"x")));
    let c = counters(&rig);
    assert_eq!(
        (c.invalid_tun_packets, c.no_route, c.no_endpoint),
        (3, 1, 1)
    );
    assert!(rig.peer(1).lock().tunn.is_none(), "no session made for it");
}

#[test]
fn a_routed_packet_is_sealed_for_its_peer_which_opens_it() {
    let mut rig = Rig::established();
    rig.now += Duration::from_secs(1);
    let mut out = vec![0u8; 2048];
    for packet in [
        ipv4(DEVICE_V4, PEER1_V4, b"pong over v4"),
        ipv6(DEVICE_V6, PEER1_V6, b"pong over v6"),
    ] {
        let sealed =
            handle_tun(&rig.state, &rig.counters, &packet, &mut out, rig.now).expect("sealed");
        assert_eq!(sealed.endpoint, REMOTE_ADDR);
        assert!(Arc::ptr_eq(sealed.peer, rig.peer(1)));
        assert!(sealed.len <= room(packet.len()));
        let datagram = out[..sealed.len].to_vec();
        assert_eq!(rig.open(&datagram), Opened::Packet(packet));
    }
    assert_eq!(rig.peer(1).lock().last_traversal, Some(rig.now));
    assert_eq!(counters(&rig), DeviceCounters::default());
}

#[test]
fn a_packet_for_a_peer_without_a_session_starts_a_handshake() {
    let rig = Rig::new();
    let mut out = vec![0u8; 2048];
    let packet = ipv4(DEVICE_V4, [10, 9, 1, 7], b"for peer 2");
    let sealed =
        handle_tun(&rig.state, &rig.counters, &packet, &mut out, rig.now).expect("an initiation");
    assert_eq!(sealed.endpoint, PEER2_ADDR);
    assert!(Arc::ptr_eq(sealed.peer, rig.peer(2)));
    assert_eq!(
        (out[0], sealed.len),
        (MSG_HANDSHAKE_INIT as u8, HANDSHAKE_INIT_LEN)
    );
}

#[test]
fn persistent_keepalive_is_sent_when_due_and_not_before() {
    let mut rig = Rig::established();
    let t0 = rig.now;
    assert_eq!(rig.peer(1).lock().last_traversal, Some(t0));
    let identity = rig.state.identity.clone();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut tick = |rig: &Rig, after: u64| {
        let mut sends = Vec::new();
        let now = t0 + Duration::from_secs(after);
        handle_timeout(rig.peer(1), identity.as_deref(), now, &mut buf, &mut sends);
        sends
    };
    let early = tick(&rig, u64::from(KEEPALIVE) - 1);
    assert!(early.is_empty(), "sent before due: {early:?}");
    let due = tick(&rig, u64::from(KEEPALIVE));
    let [(keepalive, dst)] = due.as_slice() else {
        panic!("one keepalive expected: {due:?}");
    };
    assert_eq!(*dst, REMOTE_ADDR);
    assert_eq!(rig.open(keepalive), Opened::Nothing, "a keepalive");
    let sent_at = t0 + Duration::from_secs(u64::from(KEEPALIVE));
    assert_eq!(rig.peer(1).lock().last_traversal, Some(sent_at));
    // The next one is a whole interval later.
    assert!(tick(&rig, u64::from(KEEPALIVE) * 2 - 1).is_empty());
    assert_eq!(tick(&rig, u64::from(KEEPALIVE) * 2).len(), 1);
    // Peer 2 has none configured: nothing, and no session made.
    let mut sends = Vec::new();
    let later = t0 + Duration::from_secs(3600);
    handle_timeout(
        rig.peer(2),
        identity.as_deref(),
        later,
        &mut buf,
        &mut sends,
    );
    assert!(sends.is_empty());
    assert!(rig.peer(2).lock().tunn.is_none());
}

/// The data-plane fuzz target's op lists: the committed seeds' shapes and a few more.
#[test]
fn the_fuzzing_entry_holds_its_laws_over_fixed_op_lists() {
    let v4 = ipv4(PEER1_V4, DEVICE_V4, b"12345678");
    let spoofed = ipv4(PEER2_V4, DEVICE_V4, b"12345678");
    let v6 = ipv6(PEER1_V6, DEVICE_V6, b"12345678");
    let to_peer1 = ipv4(DEVICE_V4, PEER1_V4, b"reply");
    let to_peer2 = ipv4(DEVICE_V4, [10, 9, 1, 7], b"reply");
    let op = |code: u8, bytes: &[u8]| {
        let mut o = vec![code, bytes.len() as u8];
        o.extend_from_slice(bytes);
        o
    };
    let lists: Vec<Vec<u8>> = vec![
        Vec::new(),
        // Junk of every kind, then a length past the end.
        [
            op(0, &[0; 148]),
            op(0, &[1; 148]),
            op(0, &[4; 40]),
            vec![0, 200, 1],
        ]
        .concat(),
        // Seals (v4, v6, spoofed), corruptions, a replay (no pairs), timers.
        [
            op(1, &v4),
            op(1, &v6),
            op(1, &spoofed),
            op(2, &[2, 2, 20, 1, 4, 0x80]),
            op(2, &[]),
            op(3, &[]),
        ]
        .concat(),
        // Roaming (op 6: op 1 from the second address), TUN packets for both peers,
        // garbage and nowhere, keepalives after the clock moved.
        [
            op(6, &v4),
            op(4, &to_peer1),
            op(4, &to_peer2),
            op(4, &[0x45; 30]),
            op(4, &ipv4(DEVICE_V4, [10, 8, 0, 1], b"")),
            op(3, &[KEEPALIVE as u8]),
            op(8, &[200]),
            op(1, &v4),
            op(9, &to_peer1),
        ]
        .concat(),
    ];
    for ops in &lists {
        crate::device::fuzzing::dataplane(ops);
    }
    let tally = |i: usize| fuzz::run(&lists[i]);
    assert_eq!(tally(0), fuzz::Tally::default());
    assert_eq!(
        tally(1),
        fuzz::Tally {
            dropped: 4,
            ..fuzz::Tally::default()
        }
    );
    // v4 and v6 delivered; spoofed, a corrupted copy and the replay dropped.
    assert_eq!(
        tally(2),
        fuzz::Tally {
            delivered: 2,
            opened: 0,
            dropped: 3
        }
    );
    // Two packets delivered, two opened by the remote (one sent after it roamed).
    assert_eq!(
        tally(3),
        fuzz::Tally {
            delivered: 2,
            opened: 2,
            dropped: 0
        }
    );
}

/// The committed seeds of the `dataplane` fuzz target (`fuzz/seeds/dataplane/`) hold
/// the laws, and still reach what they were written for.
#[test]
fn the_fuzz_targets_seeds_hold_the_laws() {
    let seeds: [(&[u8], fuzz::Tally); 4] = [
        (
            include_bytes!("../../../../fuzz/seeds/dataplane/junk"),
            fuzz::Tally {
                dropped: 1,
                ..fuzz::Tally::default()
            },
        ),
        (
            include_bytes!("../../../../fuzz/seeds/dataplane/send-v4"),
            fuzz::Tally {
                delivered: 2,
                ..fuzz::Tally::default()
            },
        ),
        (
            include_bytes!("../../../../fuzz/seeds/dataplane/send-v6-corrupt"),
            // A flipped ciphertext byte, then a flipped type.
            fuzz::Tally {
                delivered: 1,
                dropped: 2,
                ..fuzz::Tally::default()
            },
        ),
        (
            include_bytes!("../../../../fuzz/seeds/dataplane/roam-tun-keepalive"),
            fuzz::Tally {
                delivered: 1,
                opened: 2,
                dropped: 1,
            },
        ),
    ];
    for (i, (ops, expected)) in seeds.iter().enumerate() {
        assert_eq!(fuzz::run(ops), *expected, "seed {i}");
    }
}

/// What the fuzzer found (libFuzzer, 60 s): the remote sealed an IPv4 packet whose
/// length field cut it inside its own header, and the device delivered the stub.
/// Replayed, the laws hold: it is dropped.
#[test]
fn the_fuzzers_short_ipv4_header_is_dropped_not_delivered() {
    let tally = fuzz::run(include_bytes!(
        "../../../../fuzz/seeds/dataplane/short-ipv4-header"
    ));
    assert!(tally.dropped >= 1, "{tally:?}");
}

/// The device answered an initiation, and the TUN had a packet for the peer before
/// the initiator's keepalive confirmed the session: `Tunn` queued it, and the
/// keepalive lets it go. The receive thread hands `handle_datagram` a buffer only as
/// long as the keepalive (32 bytes): the queued packet must not be sealed into it
/// (boringtun panics on a short buffer).
#[test]
fn a_packet_queued_before_the_confirming_keepalive_goes_with_it() {
    let mut rig = Rig::new();
    let mut buf = [0u8; 256];
    let TunnResult::WriteToNetwork(init) = rig.remote.format_handshake_initiation(&mut buf, false)
    else {
        panic!("no initiation");
    };
    let init = init.to_vec();
    assert_eq!(rig.receive(REMOTE_ADDR, &init).verdict, Datagram::Handshake);
    let replies = rig.handshake_thread(REMOTE_ADDR, &init);
    let [response] = replies.as_slice() else {
        panic!("no single response: {replies:?}");
    };
    let packet = ipv4(DEVICE_V4, PEER1_V4, &[7; 200]);
    let mut out = vec![0u8; room(packet.len())];
    let sealed = handle_tun(&rig.state, &rig.counters, &packet, &mut out, rig.now);
    assert!(
        sealed.is_none_or(|_| u32::from(out[0]) == MSG_HANDSHAKE_INIT),
        "no data can go before the confirmation"
    );
    let Opened::Reply(keepalive) = rig.open(response) else {
        panic!("the remote did not take the response");
    };
    assert_eq!(keepalive.len(), 32);
    let r = rig.receive(REMOTE_ADDR, &keepalive);
    assert_eq!(r.verdict, Datagram::Keepalive);
    let sends: Vec<_> = rig.rx.sends.drain(..).collect();
    let [(peer, datagram, dst)] = sends.as_slice() else {
        panic!("not one datagram sent but {}", sends.len());
    };
    assert!(Arc::ptr_eq(peer, rig.peer(1)));
    assert_eq!(*dst, REMOTE_ADDR);
    assert_eq!(rig.open(datagram), Opened::Packet(packet));
}
