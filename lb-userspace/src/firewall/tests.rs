//! Rule sets built from configs: tables, generations, scoped prefixes, host policy.
use super::*;

#[test]
fn mac_addresses_parse_in_either_case_and_nothing_else_does() {
    assert_eq!(
        parse_mac("02:aB:00:ff:10:9c"),
        Some([0x02, 0xab, 0x00, 0xff, 0x10, 0x9c])
    );
    for bad in [
        "",
        "02:ab:00:ff:10",
        "02:ab:00:ff:10:9c:00",
        "2:ab:00:ff:10:9c",
        "02:ab:00:ff:10:zz",
        "02-ab-00-ff-10-9c",
    ] {
        assert_eq!(parse_mac(bad), None, "{bad:?}");
    }
}

/// A rule set by hand: each name with one /32 prefix pointing at its rule id (its position).
fn rule_set(names: &[&str]) -> RuleSet {
    let mut set = RuleSet::default();
    for (i, name) in names.iter().enumerate() {
        let id = i as u32;
        set.rules.push(RuleInfo {
            id,
            name: (*name).into(),
            kind: RuleKind::Global,
            action: Action::Drop,
            prefixes: vec![],
        });
        let cidr = IpNet::from(IpAddr::V4(Ipv4Addr::new(192, 0, 2, i as u8)));
        set.prefixes.push((
            cidr,
            FwRule {
                id,
                action: ACTION_DROP,
                reason: REASON_POLICY,
                _pad: [0; 2],
            },
        ));
    }
    set
}

#[test]
fn ids_that_now_name_another_rule_are_the_changed_ones() {
    let first = rule_set(&["a", "b", "c"]);
    // "a" removed: b and c move to 0 and 1, so all three ids change meaning.
    assert_eq!(rule_set(&["b", "c"]).changed_ids(&first), [0, 1]);
    // "d" appended: only its id is new.
    assert_eq!(rule_set(&["a", "b", "c", "d"]).changed_ids(&first), [3]);
    // The same set: nothing changes.
    assert!(rule_set(&["a", "b", "c"]).changed_ids(&first).is_empty());
    // "a" renamed in place: its id now names another rule.
    assert_eq!(rule_set(&["z", "b", "c"]).changed_ids(&first), [0]);
}

#[test]
fn last_hit_is_the_sample_that_saw_the_count_grow() {
    let rule = |id: u32, name: &str| RuleInfo {
        id,
        name: name.into(),
        kind: RuleKind::Global,
        action: Action::Drop,
        prefixes: vec![],
    };
    let t0 = std::time::Instant::now();
    let at = |s: u64| t0 + std::time::Duration::from_secs(s);
    let mut activity = RuleActivity::default();
    let a = rule(0, "a");
    assert_eq!(activity.observe(&a, 0, at(0)), None, "never matched");
    assert_eq!(activity.observe(&a, 5, at(1)), Some(at(1)));
    assert_eq!(
        activity.observe(&a, 5, at(2)),
        Some(at(1)),
        "no new packets"
    );
    assert_eq!(activity.observe(&a, 9, at(3)), Some(at(3)));
    // Another rule on the same id after a change starts afresh.
    let b = rule(0, "b");
    assert_eq!(activity.observe(&b, 9, at(4)), Some(at(4)));
    activity.retain(std::slice::from_ref(&b));
    assert_eq!(
        activity.observe(&a, 9, at(5)),
        Some(at(5)),
        "forgotten, then seen anew"
    );
}

/// xorshift64: reproducible random prefix sets without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn rule(id: u32, rng: &mut Rng) -> FwRule {
    let action = [ACTION_ALLOW, ACTION_DROP, ACTION_LOG][rng.below(3) as usize];
    let reason = if rng.below(4) == 0 {
        REASON_SPOOF
    } else {
        REASON_POLICY
    };
    FwRule {
        id,
        action,
        reason,
        _pad: [0; 2],
    }
}

/// An IPv4 prefix, host bits left in (the table ignores them).
fn net(addr: Ipv4Addr, len: u8) -> Ipv4Net {
    Ipv4Net::new(addr, len).expect("a length of at most 32")
}

/// The reference: every prefix that contains `addr`, the longest wins, the later of equals.
fn naive(prefixes: &[(Ipv4Net, FwRule)], addr: Ipv4Addr) -> Option<FwRule> {
    let mut best: Option<(u8, FwRule)> = None;
    for (net, rule) in prefixes {
        let len = net.prefix_len();
        if net.contains(&addr) && best.is_none_or(|(l, _)| len >= l) {
            best = Some((len, *rule));
        }
    }
    best.map(|(_, rule)| rule)
}

/// Prefixes clustered in a few /8s so that they nest and overlap, of every length.
fn random_prefixes(rng: &mut Rng, n: usize) -> Vec<(Ipv4Net, FwRule)> {
    let bases = [0x0A00_0000u32, 0xC0A8_0000, 0x2D00_0000, 0xFFFF_FF00];
    (0..n)
        .map(|i| {
            let len = rng.below(33) as u8;
            let base = bases[rng.below(bases.len() as u64) as usize];
            // Mostly near the base (nesting), sometimes anywhere; host bits left in on purpose.
            let addr = if rng.below(4) == 0 {
                rng.next() as u32
            } else {
                base ^ (rng.next() as u32 & 0x00FF_FFFF >> rng.below(24))
            };
            (net(Ipv4Addr::from(addr), len), rule(i as u32, rng))
        })
        .collect()
}

/// Addresses worth asking about: the first and last address of each prefix, their
/// neighbours outside, and random ones.
fn probes(rng: &mut Rng, prefixes: &[(Ipv4Net, FwRule)]) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for (net, _) in prefixes {
        let first = u32::from(net.network());
        let last = u32::from(net.broadcast());
        for a in [
            first,
            last,
            first.wrapping_sub(1),
            last.wrapping_add(1),
            first | (rng.next() as u32 & u32::from(net.hostmask())),
        ] {
            out.push(Ipv4Addr::from(a));
        }
    }
    out.extend((0..2000).map(|_| Ipv4Addr::from(rng.next() as u32)));
    out
}

#[track_caller]
fn check_against_reference(prefixes: &[(Ipv4Net, FwRule)], rng: &mut Rng) {
    let table = V4Table::build(prefixes).expect("table builds");
    for addr in probes(rng, prefixes) {
        assert_eq!(
            table.lookup(addr),
            naive(prefixes, addr),
            "{addr} with {} prefixes",
            prefixes.len()
        );
    }
}

#[test]
fn random_prefix_sets_agree_with_the_naive_longest_prefix_match() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for round in 0..200 {
        let n = 1 + rng.below(if round % 10 == 0 { 2000 } else { 60 }) as usize;
        let prefixes = random_prefixes(&mut rng, n);
        check_against_reference(&prefixes, &mut rng);
    }
}

#[test]
fn nested_prefixes_at_every_stride_boundary() {
    let mut rng = Rng(7);
    // 10.1.2.3 inside prefixes of every length: each longer one must win below it.
    let addr = Ipv4Addr::new(10, 1, 2, 3);
    let mut prefixes: Vec<_> = (0..=32)
        .rev()
        .map(|len| (net(addr, len), rule(u32::from(len), &mut rng)))
        .collect();
    check_against_reference(&prefixes, &mut rng);
    // An allowed /32 inside a denied /16: the longer prefix wins (docs/FIREWALL.md).
    prefixes = vec![
        (
            net(Ipv4Addr::new(192, 168, 0, 0), 16),
            FwRule {
                id: 1,
                action: ACTION_DROP,
                reason: REASON_POLICY,
                _pad: [0; 2],
            },
        ),
        (
            net(Ipv4Addr::new(192, 168, 7, 9), 32),
            FwRule {
                id: 2,
                action: ACTION_ALLOW,
                reason: REASON_POLICY,
                _pad: [0; 2],
            },
        ),
    ];
    let table = V4Table::build(&prefixes).expect("table builds");
    assert_eq!(
        table.lookup(Ipv4Addr::new(192, 168, 7, 9)).map(|r| r.id),
        Some(2)
    );
    assert_eq!(
        table.lookup(Ipv4Addr::new(192, 168, 7, 8)).map(|r| r.id),
        Some(1)
    );
    assert_eq!(table.lookup(Ipv4Addr::new(192, 169, 0, 0)), None);
}

#[test]
fn the_later_rule_of_one_prefix_wins_and_a_default_route_covers_all() {
    let drop = FwRule {
        id: 3,
        action: ACTION_DROP,
        reason: REASON_POLICY,
        _pad: [0; 2],
    };
    let log = FwRule {
        id: 4,
        action: ACTION_LOG,
        reason: REASON_POLICY,
        _pad: [0; 2],
    };
    let table = V4Table::build(&[
        (net(Ipv4Addr::UNSPECIFIED, 0), drop),
        (net(Ipv4Addr::UNSPECIFIED, 0), log),
    ])
    .expect("builds");
    for addr in [
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::BROADCAST,
    ] {
        assert_eq!(table.lookup(addr), Some(log), "{addr}");
    }
    assert_eq!(
        table.groups.len(),
        V4_ROOT_GROUPS as usize,
        "no group below the root for a /0"
    );
}

#[test]
fn the_epoch_counts_changes_and_skips_the_values_of_pre_epoch_flows() {
    assert_eq!(next_epoch(0), 2, "the first change after an upgrade");
    assert_eq!(next_epoch(2), 3);
    assert_eq!(next_epoch(u32::MAX), 2, "wraps past 0 and 1");
}

#[test]
fn a_full_generation_of_host_routes_fits() {
    // The worst case for the table: every prefix a /32 in its own /20, so each needs three
    // groups below the root.
    let n = (lb_common::MAX_PREFIXES / 2) as usize;
    let drop = FwRule {
        id: 0,
        action: ACTION_DROP,
        reason: REASON_POLICY,
        _pad: [0; 2],
    };
    let prefixes: Vec<_> = (0..n)
        .map(|i| (net(Ipv4Addr::from((i as u32) << 12 | 0x123), 32), drop))
        .collect();
    let table = V4Table::build(&prefixes).expect("a full generation fits");
    assert_eq!(table.groups.len(), V4_HALF_GROUPS as usize);
    assert_eq!(table.lookup(Ipv4Addr::from(5u32 << 12 | 0x123)), Some(drop));
    assert_eq!(table.lookup(Ipv4Addr::from(5u32 << 12 | 0x124)), None);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let too_big = FwRule {
        id: MAX_RULES,
        action: ACTION_DROP,
        reason: REASON_POLICY,
        _pad: [0; 2],
    };
    let err = V4Table::build(&[(net(Ipv4Addr::new(10, 0, 0, 0), 8), too_big)])
        .expect_err("rule id out of range");
    assert!(format!("{err:#}").contains("rule id"), "{err:#}");
    // A length over 32 no longer reaches the table: `Ipv4Net` refuses it.
    assert!(Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 33).is_err());
}
