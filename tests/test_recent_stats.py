from deployments.recent_stats import RecentStats


def test_the_last_minute_per_model():
    now = [1000.0]
    stats = RecentStats(window_s=60, clock=lambda: now[0])
    for i in range(100):
        stats.record("det", 200, float(i + 1))
    stats.record("det", 503, 1.0)
    stats.record("clf", 200, 7.0)
    now[0] += 10
    s = stats.summary()
    assert s["det"]["requests"] == 101 and s["det"]["errors"] == 1
    assert s["det"]["p50_ms"] == 51.0 and s["det"]["p99_ms"] == 100.0
    assert s["det"]["requests_per_s"] == 10.1
    now[0] += 61
    assert stats.summary() == {}
