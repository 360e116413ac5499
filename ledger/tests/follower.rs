//! A long-lived reader that follows the log (`Ledger::open_follower` / `follow`): it sees every
//! event once, in order, while a writer appends, and never holds the persistent index the
//! writer needs.

use ledger::event::{EventKind, RunStarted, Tag};
use ledger::runs::RunList;
use ledger::{Hash, Ledger, Wait};

fn run_started(i: u8, config: Hash) -> EventKind {
    EventKind::RunStarted(RunStarted {
        run_id: Hash::of(&[i]),
        experiment: format!("exp-{i}"),
        config,
        config_path: "c.toml".into(),
    })
}

#[test]
fn a_follower_sees_every_event_once_while_a_writer_appends() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("l");
    Ledger::init(&dir).unwrap();
    let mut writer = Ledger::open_writer(&dir, Wait::NoWait).unwrap();
    let (config, _) = writer.store().put_bytes(b"[experiment]\n").unwrap();
    writer.append(vec![run_started(1, config)]).unwrap();

    // The writer holds the persistent index; the follower opens anyway.
    let mut seen = Vec::new();
    let mut runs = RunList::new();
    let mut follower = Ledger::open_follower(&dir, &mut |s| {
        seen.push(s.event.seq);
        runs.learn(s);
    })
    .unwrap();
    assert_eq!(seen, [0]);
    assert!(follower.index().is_private());

    writer
        .append(vec![
            run_started(2, config),
            EventKind::Tag(Tag {
                name: "t".into(),
                target: config,
            }),
        ])
        .unwrap();
    let n = follower
        .follow(&mut |s| {
            seen.push(s.event.seq);
            runs.learn(s);
        })
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(seen, [0, 1, 2]);
    assert_eq!(follower.event_count(), 3);
    assert_eq!(follower.resolve("t").unwrap(), config);
    assert_eq!(runs.runs().len(), 2);
    assert_eq!(follower.follow(&mut |_| panic!("nothing new")).unwrap(), 0);

    // The writer goes away and another takes the persistent index: the follower holds none.
    drop(writer);
    let mut again = Ledger::open_writer(&dir, Wait::NoWait).unwrap();
    again.append(vec![run_started(3, config)]).unwrap();
    follower.follow(&mut |s| runs.learn(s)).unwrap();
    assert_eq!(runs.runs().len(), 3);
    assert_eq!(
        runs.latest_with_config(&config).unwrap().experiment,
        "exp-3"
    );
}

#[test]
fn a_writer_cannot_follow() {
    let tmp = tempfile::tempdir().unwrap();
    Ledger::init(tmp.path()).unwrap();
    let mut writer = Ledger::open_writer(tmp.path(), Wait::NoWait).unwrap();
    let err = writer.follow(&mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("follow"), "{err}");
}
