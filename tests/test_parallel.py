"""Independent calls on all cores: results in order, none for no calls."""

import pytest

from pipeline.parallel import parallel


def test_results_come_in_the_order_of_the_calls():
    assert parallel(*[(lambda k=k: k * k) for k in range(7)]) == [k * k for k in range(7)]


def test_no_calls_give_no_results():
    # A labelling with no piece to flood asked for none (the pool refused zero workers).
    assert parallel() == []


def test_an_exception_comes_after_every_call_has_run():
    ran = []

    def fail():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        parallel(fail, lambda: ran.append(1))
    assert ran == [1]
