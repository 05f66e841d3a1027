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
