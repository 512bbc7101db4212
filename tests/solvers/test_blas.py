import threading

from threadpoolctl import threadpool_info

from solvers.blas import one_blas_thread


def _blas_threads() -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def test_blas_runs_on_one_thread_inside_and_its_limit_comes_back_after():
    before = _blas_threads()
    with one_blas_thread():
        assert _blas_threads() == {1}
        with one_blas_thread():  # re-entrant
            assert _blas_threads() == {1}
        assert _blas_threads() == {1}
    assert _blas_threads() == before


def test_concurrent_holders_keep_the_limit_until_the_last_one_leaves():
    before = _blas_threads()
    entered, release = threading.Event(), threading.Event()
    seen = []

    def member() -> None:
        with one_blas_thread():
            entered.set()
            release.wait(10)
            seen.append(_blas_threads())

    with one_blas_thread():
        other = threading.Thread(target=member)
        other.start()
        entered.wait(10)
    # the main thread left first: the member still holds the limit
    seen.append(_blas_threads())
    release.set()
    other.join(10)
    assert seen == [{1}, {1}]
    assert _blas_threads() == before
