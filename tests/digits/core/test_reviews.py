"""Reviews: append-only decisions, the queue, undo, bulk accept, the audit sample and the Wilson
estimate, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import pytest
from scored_batch import make_batch
from sqlalchemy import func, select

from digits.core import reviews
from digits.core.db import session
from digits.core.schema import Review


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        (45, 50, 0.7864, 0.9565),
        (10, 10, 0.7225, 1.0),
        (0, 10, 0.0, 0.2775),
        (50, 100, 0.4038, 0.5962),
    ],
)
def test_wilson_interval_matches_the_textbook_values(
    successes: int, n: int, low: float, high: float
) -> None:
    interval = reviews.wilson(successes, n)
    assert interval is not None
    assert interval[0] == pytest.approx(low, abs=5e-4)
    assert interval[1] == pytest.approx(high, abs=5e-4)


def test_wilson_without_data_is_none_and_the_estimate_says_so() -> None:
    assert reviews.wilson(0, 0) is None
    assert reviews.estimate_from([]).text() == "no audited items yet"


def test_the_audit_sample_in_sql_is_the_same_as_in_python(backend: str) -> None:
    """The queue's audit items are exactly the confident items whose draw is below the share,
    and the share holds (2 % of 3,000 confident-or-not items: between 1 % and 3 %)."""
    _, ids = make_batch(3000)
    queued = reviews.review_queue(share=0.02, limit=10_000, kind="audit")
    expected = {i for n, i in enumerate(ids) if (n + 1) % 5 and reviews.audit_draw(i) < 0.02}
    assert {q.item_id for q in queued} == expected
    assert 0.01 * 2400 <= len(expected) <= 0.03 * 2400
    assert all(q.kind == "audit" for q in queued)
    assert reviews.queue_counts(share=0.02) == {"flagged": 600, "audit": len(expected)}


def test_the_queue_is_least_confident_first_and_decided_items_leave_it(backend: str) -> None:
    batch_id, _ = make_batch(100)
    queue = reviews.review_queue(batch_id, share=0.0)
    assert [q.kind for q in queue] == ["flagged"] * 20
    assert [q.confidence for q in queue] == sorted(q.confidence for q in queue)
    first = queue[0]
    assert first.top3[0] == (first.label, pytest.approx(first.confidence))
    reviews.record(first.item_id, 7, "ana", share=0.0)
    assert first.item_id not in {q.item_id for q in reviews.review_queue(batch_id, share=0.0)}


def test_a_second_decision_supersedes_the_first_and_both_stay(backend: str) -> None:
    batch_id, _ = make_batch(20)
    item = reviews.review_queue(batch_id, share=0.0)[0]
    reviews.record(item.item_id, 3, "ana", share=0.0)
    reviews.record(item.item_id, 8, "ben", share=0.0)
    history = reviews.history(item.item_id)
    assert [(h["label"], h["reviewer"], h["kind"]) for h in history] == [
        (3, "ana", "flagged"),
        (8, "ben", "flagged"),
    ]
    assert all(h["model_label"] == item.label and h["model_version"] == 1 for h in history)
    with session() as sess:
        assert reviews.reviewed_labels(sess, batch_id) == {item.item_id: 8}


def test_undo_withdraws_the_reviewers_last_decision_and_the_item_returns(backend: str) -> None:
    batch_id, _ = make_batch(20)
    a, b = reviews.review_queue(batch_id, share=0.0)[:2]
    reviews.record(a.item_id, 1, "ana", share=0.0)
    reviews.record(b.item_id, 2, "ana", share=0.0)
    undone = reviews.undo_last("ana", batch_id)
    assert undone is not None and undone.item_id == b.item_id and undone.label is None
    waiting = {q.item_id for q in reviews.review_queue(batch_id, share=0.0)}
    assert b.item_id in waiting and a.item_id not in waiting
    assert reviews.undo_last("ana", batch_id).item_id == a.item_id  # type: ignore[union-attr]
    assert reviews.undo_last("ana", batch_id) is None
    assert reviews.undo_last("nobody") is None
    with session() as sess:
        assert sess.scalar(select(func.count()).select_from(Review)) == 4


def test_accept_all_above_confirms_flagged_items_only_and_never_audit_ones(backend: str) -> None:
    batch_id, _ = make_batch(500)
    before = reviews.queue_counts(batch_id, share=0.05)
    queue = reviews.review_queue(batch_id, share=0.05, limit=1000, kind="flagged")
    above = [q for q in queue if q.confidence >= 0.7]
    assert 0 < len(above) < len(queue)
    assert reviews.accept_all_above(batch_id, 0.7, "ana", share=0.05) == len(above)
    after = reviews.queue_counts(batch_id, share=0.05)
    assert after == {"flagged": before["flagged"] - len(above), "audit": before["audit"]}
    assert reviews.accept_all_above(batch_id, 0.7, "ana", share=0.05) == 0  # safe twice
    with session() as sess:
        kinds = set(sess.scalars(select(Review.kind)))
    assert kinds == {"bulk"}


def test_the_estimate_counts_current_audit_decisions(backend: str) -> None:
    batch_id, _ = make_batch(2000)
    audit = reviews.review_queue(batch_id, share=0.05, limit=1000, kind="audit")
    assert len(audit) >= 40
    for n, q in enumerate(audit[:40]):
        wrong = n < 4  # the reviewer disagrees with the model on 4 of 40
        reviews.record(q.item_id, (q.label + 1) % 10 if wrong else q.label, "ana", share=0.05)
    reviews.record(audit[0].item_id, audit[0].label, "ana", share=0.05)  # changed their mind
    got = reviews.estimate(batch_id)
    assert (got.reviewed, got.correct) == (40, 37)
    assert (got.low, got.high) == reviews.wilson(37, 40)
    assert "92.5 % (95 % CI" in got.text() and "40 audited" in got.text()
    assert reviews.estimate(batch_id + 1).reviewed == 0


@pytest.mark.parametrize(
    ("label", "message"), [(10, "label must be a digit"), (-1, "label must be a digit")]
)
def test_a_bad_label_is_refused(backend: str, label: int, message: str) -> None:
    _, ids = make_batch(5)
    with pytest.raises(reviews.ReviewError, match=message):
        reviews.record(ids[0], label, "ana", share=0.0)


def test_an_unknown_item_is_refused_by_name(backend: str) -> None:
    with pytest.raises(reviews.ReviewError, match="item 999999 does not exist"):
        reviews.record(999_999, 3, "ana", share=0.0)


def test_reviewed_items_are_the_current_labels_and_leave_undone_ones_out(backend: str) -> None:
    """What `digits reviews list` and the training export read: the newest decision counts,
    an undone item has no reviewed label, and ``batch_id`` narrows to one batch."""
    first, _ = make_batch(20)
    second, _ = make_batch(20)
    a, b, c = reviews.review_queue(first, share=0.0)[:3]
    other = reviews.review_queue(second, share=0.0)[0]
    reviews.record(a.item_id, 3, "ana", share=0.0)
    reviews.record(a.item_id, 4, "ben", share=0.0)
    reviews.record(b.item_id, b.label, "ana", share=0.0)
    reviews.record(c.item_id, 9, "ana", share=0.0)
    reviews.undo_last("ana", first)  # withdraws c
    reviews.record(other.item_id, 1, "ana", share=0.0)
    got = {(r.item_id, r.label, r.model_label, r.reviewer) for r in reviews.reviewed_items(first)}
    assert got == {(a.item_id, 4, a.label, "ben"), (b.item_id, b.label, b.label, "ana")}
    everything = reviews.reviewed_items()
    assert [r.batch_id for r in everything] == [first, first, second]
    assert all(r.batch_kind == "csv" and r.kind == "flagged" for r in everything)
