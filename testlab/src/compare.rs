//! Comparing snapshots of a host's state, taken as text (one fact per
//! line), before and after an operation that must leave it as it was.

/// Panics unless `after` equals `before`, naming `when` and listing the
/// lines only one side has, then the whole of `after`.
#[track_caller]
pub fn assert_unchanged(after: &str, before: &str, when: &str) {
    if after == before {
        return;
    }
    let (a, b): (Vec<&str>, Vec<&str>) = (after.lines().collect(), before.lines().collect());
    let gone: Vec<&&str> = b.iter().filter(|l| !a.contains(l)).collect();
    let new: Vec<&&str> = a.iter().filter(|l| !b.contains(l)).collect();
    panic!(
        "{when}: the host changed\nbefore only: {gone:#?}\nafter only: {new:#?}\nafter:\n{after}"
    );
}
