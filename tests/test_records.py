import json

from sagelm.records import Judgment, JudgmentLog, judgment_key


def test_log_appends_and_remembers_keys(tmp_path):
    path = tmp_path / "out.jsonl"
    with JudgmentLog(path) as log:
        log.write([Judgment(id="a", aspect="honesty", verdict="1", key="k1"), Judgment(id="b", aspect=None, key="k2")])
    with JudgmentLog(path) as log:
        assert log.done == {"k1", "k2"}
        log.write([Judgment(id="c", aspect="honesty", key="k3")])
    lines = path.read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["a", "b", "c"]
    assert set(json.loads(lines[0])) >= {"id", "aspect", "verdict", "probabilities", "rationale", "raw", "swapped",
                                         "label", "error"}  # fmt: skip


def test_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "out.jsonl"
    good = Judgment(id="a", aspect="honesty", key="k1").to_json()
    path.write_text(good + "\n" + good[:25])
    with JudgmentLog(path) as log:
        assert log.done == {"k1"}
    assert path.read_text() == good + "\n"


def test_key_depends_on_every_ingredient():
    base = (("d1", "d2"), "Q", "honesty", False, "m", {"do_sample": False})
    k = judgment_key(*base)
    variants = [
        (("d1", "dX"), "Q", "honesty", False, "m", {"do_sample": False}),
        (("d1", "d2"), "Q2", "honesty", False, "m", {"do_sample": False}),
        (("d1", "d2"), "Q", "helpfulness", False, "m", {"do_sample": False}),
        (("d1", "d2"), "Q", "honesty", True, "m", {"do_sample": False}),
        (("d1", "d2"), "Q", "honesty", False, "m2", {"do_sample": False}),
        (("d1", "d2"), "Q", "honesty", False, "m", {"do_sample": True}),
    ]
    assert k == judgment_key(*base)
    assert len({judgment_key(*v) for v in variants} | {k}) == 7


# -- what --output may be (issue 9: 2, 4, 9, 15) ----------------------------------------------------------------
import fcntl  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from sagelm.records import JudgmentLogError  # noqa: E402


def _record(key: str, model: str = "m", backend: str = "hf") -> str:
    return Judgment(id=key, aspect="honesty", verdict="1", key=key, model=model, backend=backend).to_json() + "\n"


@pytest.mark.parametrize(
    "content, why",
    [
        (b'[{"instruction": "Q", "output": "1"}]\n', "line 1 is not a sagelm judgment record"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x80\xbb\x00\x00\xff\xfe\n\x00", "not UTF-8"),
        (b"my notes\nsecond line without a final newline", "line 1 is not JSON"),
        (b"a text file without a final newline", "holds no judgment records"),
        (b'{"id": "p1", "instruction": "Q", "audio_1": "a.wav", "audio_2": "b.wav"}\n', "not a sagelm judgment"),
    ],
)
def test_a_file_that_is_not_sagelm_records_is_refused_and_left_as_it_was(tmp_path, content, why):
    path = tmp_path / "out.jsonl"
    path.write_bytes(content)
    with pytest.raises(JudgmentLogError) as e:
        JudgmentLog(path)
    assert why in str(e.value) and str(path) in str(e.value)
    assert path.read_bytes() == content


def test_our_own_torn_first_record_is_cut(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text(_record("k1")[:30])
    with JudgmentLog(path) as log:
        assert log.done == set()
    assert path.read_text() == ""


def test_a_second_writer_is_refused_while_the_first_holds_the_file(tmp_path):
    path = tmp_path / "out.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from sagelm.records import JudgmentLog\n"
         f"log = JudgmentLog({str(path)!r}); print('locked', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(JudgmentLogError, match="being written by another sagelm run"):
            JudgmentLog(path)
    finally:
        holder.kill()
        holder.wait()
    with JudgmentLog(path) as log:  # free again once the first is gone
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        log.write([Judgment(id="a", aspect="honesty", key="k1")])


def test_resume_collapses_judgments_written_twice(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text(_record("k1") + _record("k2") + _record("k1") + _record("k2") + _record("k3"))
    with JudgmentLog(path) as log:
        assert log.done == {"k1", "k2", "k3"}
        log.write([Judgment(id="k4", aspect="honesty", key="k4")])
    assert [json.loads(x)["key"] for x in path.read_text().splitlines()] == ["k1", "k2", "k3", "k4"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_folder_a_pipe_or_an_unwritable_place_is_one_error(tmp_path):
    with pytest.raises(JudgmentLogError, match="is a folder"):
        JudgmentLog(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(JudgmentLogError, match="not a regular file"):
        JudgmentLog(fifo)  # a pipe: opening it would wait for a reader forever
    (tmp_path / "file").write_text("x")
    with pytest.raises(JudgmentLogError, match="cannot write there"):
        JudgmentLog(tmp_path / "file" / "out.jsonl")


def test_another_judges_records_are_announced(tmp_path, caplog):
    path = tmp_path / "out.jsonl"
    path.write_text(_record("k1", model="judge-a"))
    with JudgmentLog(path) as log:
        log.warn_if_mixed("judge-a", "hf")
        assert "already holds" not in caplog.text
        log.warn_if_mixed("judge-b", "hf")
        log.warn_if_mixed("judge-a", "vllm")
    assert caplog.text.count("already holds records of judge-a (hf)") == 2


# -- file_digest: the audio part of resume keys (issue 9 item 7) -----------------------------------------------
def test_digest_of_a_fifo_and_dev_zero_returns_promptly(tmp_path):
    """Hashed whole, /dev/zero never ends and a FIFO blocks open(): in a subprocess with a timeout, so that a
    regression fails instead of hanging the suite."""
    import os
    import subprocess
    import sys

    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    code = "import sys\nfrom sagelm.records import file_digest\nprint([file_digest(p) for p in sys.argv[1:]])"
    done = subprocess.run([sys.executable, "-c", code, str(fifo), "/dev/zero", str(tmp_path)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str([f"unreadable:{fifo}", "unreadable:/dev/zero", f"unreadable:{tmp_path}"])


def test_digest_reads_only_the_ends_of_a_big_file_and_follows_its_content(tmp_path):
    import os
    import shutil

    from sagelm.records import DIGEST_END_BYTES, bytes_digest, file_digest

    path = tmp_path / "big.wav"
    data = bytearray(os.urandom(3 * DIGEST_END_BYTES))
    path.write_bytes(data)
    first = file_digest(str(path))
    assert len(first) == 64 and first == bytes_digest(bytes(data))
    shutil.copyfile(path, tmp_path / "copy.wav")  # a copy (a new modification time) keeps its resume keys
    assert file_digest(str(tmp_path / "copy.wav")) == first
    middle = bytearray(data)
    middle[len(data) // 2] ^= 1  # not read: the price of not reading gigabytes
    path.write_bytes(middle)
    assert file_digest(str(path)) == first
    for where in (0, DIGEST_END_BYTES - 1, -DIGEST_END_BYTES, -1):  # a byte of the head or of the tail
        changed = bytearray(data)
        changed[where] ^= 1
        path.write_bytes(changed)
        assert file_digest(str(path)) != first, where
    path.write_bytes(data + b"x")
    assert file_digest(str(path)) != first  # its size
    assert file_digest(str(tmp_path / "missing.wav")) == f"unreadable:{tmp_path / 'missing.wav'}"


def test_digest_of_a_file_up_to_2_mib_is_the_sha256_of_its_bytes_as_before(tmp_path):
    import hashlib
    import os

    from sagelm.records import DIGEST_END_BYTES, bytes_digest, file_digest

    for size in (0, 300_000, 2 * DIGEST_END_BYTES):
        data = os.urandom(size)
        (tmp_path / "a.wav").write_bytes(data)
        assert file_digest(str(tmp_path / "a.wav")) == hashlib.sha256(data).hexdigest() == bytes_digest(data)


def test_digest_cache_remembers_a_file_by_its_stat_and_misses_on_any_change(tmp_path):
    """A rerun stats the clips instead of reading them: the digest comes from the cache entry of the file's stat
    (a planted entry proves it is not read), and a rewrite of the same size, even with its old modification
    time put back, misses (the change time moved) and is hashed anew."""
    import os

    from sagelm.records import DigestCache, file_digest

    clip = tmp_path / "a.wav"
    clip.write_bytes(os.urandom(300_000))
    cache = DigestCache(tmp_path / "cache", racy_s=0)
    first = cache(str(clip))
    assert first == file_digest(str(clip))
    (entry,) = (tmp_path / "cache").rglob("*.json")
    entry.write_text('{"digest": "planted"}')
    assert DigestCache(tmp_path / "cache", racy_s=0)(str(clip)) == "planted"  # a new process: from the stat alone
    old = clip.stat()
    clip.write_bytes(os.urandom(300_000))
    os.utime(clip, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert cache(str(clip)) == file_digest(str(clip)) != first
    assert cache(str(tmp_path / "missing.wav")) == f"unreadable:{tmp_path / 'missing.wav'}"
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 2  # the missing file is not remembered


def test_digest_cache_does_not_remember_a_file_changed_just_now(tmp_path):
    """Within the file system's timestamp tick a second change would keep the stat: a fresh file is hashed each
    time until it is DIGEST_RACY_S old."""
    import os

    from sagelm.records import DigestCache, file_digest

    clip = tmp_path / "a.wav"
    clip.write_bytes(os.urandom(1000))
    assert DigestCache(tmp_path / "cache")(str(clip)) == file_digest(str(clip))
    assert not list((tmp_path / "cache").rglob("*.json"))


def test_digest_cache_that_cannot_be_written_warns_once_and_digests_go_on(tmp_path, caplog):
    import os

    from sagelm.records import DigestCache, file_digest

    (tmp_path / "cache").write_text("a file where the cache folder would be")
    cache = DigestCache(tmp_path / "cache", racy_s=0)
    clips = [tmp_path / f"{i}.wav" for i in range(3)]
    for c in clips:
        c.write_bytes(os.urandom(1000))
    with caplog.at_level("WARNING"):
        assert [cache(str(c)) for c in clips] == [file_digest(str(c)) for c in clips]
    warned = [r.getMessage() for r in caplog.records if "digest cache" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(f"cannot write the audio digest cache in {tmp_path / 'cache'}")


def test_a_failed_judgment_is_tried_again_and_its_new_record_supersedes_the_error(tmp_path):
    path = tmp_path / "out.jsonl"
    failed = Judgment(id="a", aspect="honesty", error="a.wav: no such file", key="k1")
    with JudgmentLog(path) as log:
        log.write([failed, Judgment(id="b", aspect="honesty", verdict="2", key="k2")])
    with JudgmentLog(path) as log:
        assert (log.done, log.failed) == ({"k2"}, {"k1"})
        log.write([Judgment(id="a", aspect="honesty", verdict="1", key="k1")])
    with JudgmentLog(path) as log:
        assert (log.done, log.failed) == ({"k1", "k2"}, set())
    assert [(json.loads(x)["id"], json.loads(x)["verdict"]) for x in path.read_text().splitlines()] == [
        ("b", "2"), ("a", "1")]  # fmt: skip


def test_non_finite_probabilities_are_written_as_null_never_nan(tmp_path):
    """Strict JSON readers (JavaScript's JSON.parse, jq) reject NaN and Infinity: a record never holds them."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} in a judgment record")

    nan, inf = float("nan"), float("inf")
    for probabilities in ({"1": nan, "2": nan, "Tie": nan}, {"1": inf, "2": -inf, "Tie": 0.25}):
        line = Judgment(id="a", aspect="honesty", probabilities=probabilities, key="k").to_json()
        assert "NaN" not in line and "Infinity" not in line
        record = json.loads(line, parse_constant=refuse)
        assert record["probabilities"] == {k: (v if v == 0.25 else None) for k, v in probabilities.items()}
    path = tmp_path / "out.jsonl"
    with JudgmentLog(path) as log:  # and so through the log file
        log.write([Judgment(id="a", aspect="honesty", probabilities={"1": nan, "2": 1.0, "Tie": inf}, key="k")])
    assert json.loads(path.read_text(), parse_constant=refuse)["probabilities"] == {"1": None, "2": 1.0, "Tie": None}
