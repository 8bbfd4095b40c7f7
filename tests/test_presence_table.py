"""The pure presence table (``pushsvc.protocol.presence``) under any interleaving of joins,
leaves, renewals and expiry: counts always match a plain model, and a view kept only from
the diffs always equals the snapshot."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pushsvc.protocol.presence import PresenceDiff, PresenceEntry, PresenceTable

TTL = 10.0
conns = st.sampled_from([f"c{i}" for i in range(6)])
subjects = st.sampled_from(["alice", "bob", "carol"])


class PresenceRules(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table = PresenceTable()
        self.now = 0.0
        self.model: dict[str, tuple[str, bytes, float]] = {}  # conn -> subject, info, deadline
        self.view: dict[str, int] = {}  # subject -> connections, from diffs only

    def apply(self, diffs: list[PresenceDiff | None]) -> None:
        for diff in diffs:
            if diff is None:
                continue
            before = self.view.get(diff.subject, 0)
            step = 1 if diff.kind == "join" else -1
            assert diff.connections == before + step  # a diff per entry, count after it
            if diff.connections:
                self.view[diff.subject] = diff.connections
            else:
                del self.view[diff.subject]

    @rule(conn=conns, subject=subjects, tab=st.integers(0, 3))
    def join(self, conn: str, subject: str, tab: int) -> None:
        info = b'{"tab":%d}' % tab
        diff = self.table.join(PresenceEntry("room", conn, subject, info), self.now + TTL)
        if conn in self.model:
            assert diff is None  # renewed only, whatever the subject given
            held = self.model[conn]
            self.model[conn] = (held[0], held[1], self.now + TTL)
        else:
            assert diff is not None and (diff.kind, diff.subject, diff.info) == (
                "join",
                subject,
                info,
            )
            self.model[conn] = (subject, info, self.now + TTL)
        self.apply([diff])

    @rule(conn=conns)
    def leave(self, conn: str) -> None:
        diff = self.table.leave(conn)
        held = self.model.pop(conn, None)
        assert (diff is None) == (held is None)
        if held is not None:
            assert diff is not None and (diff.kind, diff.subject) == ("leave", held[0])
        self.apply([diff])

    @rule(conn=conns)
    def renew(self, conn: str) -> None:
        assert self.table.renew(conn, self.now + TTL) == (conn in self.model)
        if conn in self.model:
            subject, info, _ = self.model[conn]
            self.model[conn] = (subject, info, self.now + TTL)

    @rule(dt=st.sampled_from([0.0, 1.0, 4.0, TTL, 2 * TTL]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        diffs = self.table.expire(self.now)
        gone = {c for c, (_, _, deadline) in self.model.items() if deadline <= self.now}
        assert len(diffs) == len(gone) and all(d.kind == "leave" for d in diffs)
        for conn in gone:
            del self.model[conn]
        self.apply(list(diffs))

    @invariant()
    def counts_match_the_model_and_the_view(self) -> None:
        subjects_now = {subject for subject, _, _ in self.model.values()}
        assert self.table.stats() == (len(subjects_now), len(self.model))
        snap = self.table.snapshot(100)
        assert {s: n for s, _, n in snap.members} == self.view
        assert [s for s, _, _ in snap.members] == sorted(subjects_now)
        assert (snap.member_count, snap.connection_count) == self.table.stats()
        if subjects_now:  # one member over the limit: counts only
            cut = self.table.snapshot(len(subjects_now) - 1)
            assert cut.truncated and cut.members == []
            assert (cut.member_count, cut.connection_count) == self.table.stats()


TestPresenceRules = PresenceRules.TestCase
TestPresenceRules.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
