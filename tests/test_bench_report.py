"""make bench's arithmetic (load_tests/bench.py): per-round ratios and the targets' checks, no Ray."""

from load_tests.bench import Row, compare, median_row, paired_ratio


def rounds(model: str, setup: str, concurrency: int, img_s: list[float], cpu_ms: list[float]) -> Row:
    runs = [Row(model, setup, concurrency, 100, r, 10.0, 20.0, 30.0, 0, c) for r, c in zip(img_s, cpu_ms)]
    return median_row(runs)


def test_median_row_keeps_each_round_in_order():
    row = rounds("m", "served", 8, [10.0, 30.0, 20.0], [5.0, 7.0, 6.0])
    assert row.img_s == 20.0 and row.cpu_ms_per_req == 6.0
    assert row.round_img_s == [10.0, 30.0, 20.0] and row.round_cpu_ms == [5.0, 7.0, 6.0]
    assert row.requests == 300


def test_paired_ratio_is_robust_where_the_ratio_of_medians_is_not():
    # The machine is slow in rounds 2-3, and one round of the served setup (the 4th) was disturbed:
    # 0.9 x the limit in three rounds of four. The medians' ratio says 0.76 x.
    limit = rounds("m", "in-process", 8, [100.0, 70.0, 72.0, 110.0], [5.0, 7.0, 7.0, 5.0])
    served = rounds("m", "served", 8, [90.0, 63.0, 64.8, 66.0], [6.0, 8.4, 8.4, 6.0])
    assert abs(paired_ratio(served, limit, "img_s") - 0.9) < 1e-9
    assert abs(paired_ratio(served, limit, "cpu_ms") - 1.2) < 1e-9
    assert served.img_s / limit.img_s < 0.77


def test_paired_ratio_without_matching_rounds_is_the_medians_ratio():
    limit = rounds("m", "in-process", 1, [100.0, 120.0], [5.0, 5.0])
    lone = rounds("m", "in-process 2 threads", 1, [130.0], [6.0])
    assert paired_ratio(lone, limit, "img_s") == 130.0 / 110.0


def test_compare_passes_and_fails_on_the_paired_ratios():
    limit8 = rounds("fast", "in-process", 8, [100.0, 80.0], [5.0, 6.0])
    limit1 = rounds("fast", "in-process", 1, [60.0, 50.0], [5.0, 6.0])
    served8 = rounds("fast", "served", 8, [86.0, 68.8], [6.0, 7.2])  # 0.86 x, 1.2 x the CPU
    served1 = rounds("fast", "served", 1, [50.0, 40.0], [7.0, 8.4])  # 1.4 x the CPU
    plain8 = rounds("fast", "plain server", 8, [120.0, 90.0], [5.0, 6.0])  # served 0.72-0.76 x it
    table, checks = compare([limit1, served1, limit8, plain8, served8])
    assert any(c.startswith("PASS") and "concurrency 8 throughput 77.4 img/s = 0.86 x" in c for c in checks)
    assert any(c.startswith("FAIL") and "x the plain server" in c for c in checks)
    assert any(c.startswith("PASS") and "concurrency 8 CPU" in c and "1.20 x" in c for c in checks)
    assert any(c.startswith("FAIL") and "concurrency 1 CPU" in c and "1.40 x" in c for c in checks)
    served_row = next(r for r in table if r["setup"] == "served" and r["concurrency"] == 8)
    assert abs(served_row["img_s_ratio"] - 0.86) < 1e-9


def test_the_slow_models_lone_request_is_checked_against_its_best_thread_count_round_by_round():
    one = rounds("slow", "in-process", 1, [10.0, 10.0, 10.0], [90.0, 90.0, 90.0])
    two = rounds("slow", "in-process 2 threads", 1, [12.0, 12.0, 12.0], [110.0, 110.0, 110.0])
    one.round_p50_ms, one.p50_ms = [90.0, 100.0, 80.0], 90.0
    two.round_p50_ms, two.p50_ms = [70.0, 80.0, 75.0], 75.0
    served = rounds("slow", "served", 1, [12.0, 12.0, 12.0], [120.0, 120.0, 120.0])
    served.round_p50_ms, served.p50_ms = [76.0, 90.0, 79.0], 79.0  # + 6, + 10, + 4 over 2 threads
    _, checks = compare([one, two, served])
    (line,) = [c for c in checks if "concurrency 1 p50" in c]
    assert line.startswith("PASS") and "in-process 2 threads 75.0 ms: +6.0 ms" in line
    served.round_p50_ms = [80.0, 90.0, 85.0]  # + 10, + 10, + 10
    _, checks = compare([one, two, served])
    assert any(c.startswith("FAIL") and "+10.0 ms" in c for c in checks)


def test_the_cores_threads_reference_row_is_compared_with_the_top_concurrency():
    limit8 = rounds("fast", "in-process", 8, [100.0, 80.0], [5.0, 6.0])
    limit1 = rounds("fast", "in-process", 1, [60.0, 50.0], [5.0, 6.0])
    cores = rounds("fast", "in-process, 2 threads", 2, [120.0, 96.0], [4.5, 5.4])
    table, _ = compare([limit1, limit8, cores])
    row = next(r for r in table if r["setup"] == "in-process, 2 threads")
    assert abs(row["img_s_ratio"] - 1.2) < 1e-9 and abs(row["cpu_ratio"] - 0.9) < 1e-9
