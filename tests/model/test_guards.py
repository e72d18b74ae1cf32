"""Generation guards (SamplingConfig.max_targets, repetition_ngram/repetition_count): a scripted loop is
cut with the right stop_reason on every decoding path; a legitimate multi-target answer is not; the
defaults (no guards, as the release) give the same tokens as before."""
from __future__ import annotations

import pytest

from tests.support.tiny_checkpoint import PLANNED, Q_THREE
from pixellm_ros.model import SamplingConfig, generate, generate_batch
from pixellm_ros.model.compiled import CompiledDecoder
from pixellm_ros.model.scratch import ScriptedAnswer
from pixellm_ros.model.answer_text import ends_in_word_run, tail_repeats
from pixellm_ros.params import ConfigError, configure, load_defaults

GUARDED = SamplingConfig(max_new_tokens=96, max_targets=8, repetition_ngram=16, repetition_count=4)  # the node's


def test_node_parameters_map_to_the_guards(tiny_ckpt):
    defaults = load_defaults()
    sampling = configure({**defaults, "model_path": str(tiny_ckpt.checkpoint)})[1].sampling
    assert (sampling.max_targets, sampling.repetition_ngram, sampling.repetition_count) == (
        GUARDED.max_targets, GUARDED.repetition_ngram, GUARDED.repetition_count) == (
        defaults["max_targets"], defaults["repetition_ngram"], defaults["repetition_count"])
    with pytest.raises(ConfigError, match="max_targets must be >= 0.*repetition_count must be >= 2"):
        configure({**defaults, "model_path": str(tiny_ckpt.checkpoint), "max_targets": -1, "repetition_count": 1})


@pytest.fixture
def loops(taught):
    """(target loop "the cup [SEG0..5] and", plain-word loop "cup and"), as token ids of the tiny tokenizer."""
    words = {w: taught.tok.encode(w, add_bos=False) for w in ("the", "cup", "and")}
    target_loop = words["the"] + words["cup"] + list(taught.tok.seg_token_ids) + words["and"]
    return target_loop, words["cup"] + words["and"]


def run(t, sampling, decoder=None):
    return generate(t.model, t.tok, t.feats, t.prefix, "Where is the cup?", sampling, decoder=decoder)


def test_tail_repeats():
    ids = [9, 1, 2, 3, 1, 2, 3]
    assert tail_repeats(ids, 3) == 2 and tail_repeats(ids, 1) == 1 and tail_repeats(ids, 8) == 0
    assert tail_repeats([5, 5, 5], 1) == 3 and tail_repeats([5, 5, 5], 2) == 1


def test_defaults_are_the_release(taught, loops):
    """No guard by default: the loop runs to max_new_tokens, as before."""
    assert SamplingConfig().max_targets == 0 and SamplingConfig().repetition_ngram == 0
    g = run(taught, SamplingConfig(max_new_tokens=120, logits_processor=ScriptedAnswer(loops[0], loop=True)))
    assert len(g.token_ids) == 120 and g.stop_reason == "max_new_tokens"
    assert len(g.targets) == (120 + 1) // len(loops[0])


@pytest.mark.parametrize("n", [1, 3])
def test_max_targets_stops_right_after_the_nth_target(taught, loops, n):
    cycle = loops[0]
    sampling = SamplingConfig(max_new_tokens=120, max_targets=n, logits_processor=ScriptedAnswer(cycle, loop=True))
    g = run(taught, sampling)
    assert g.stop_reason == "max_targets" and len(g.targets) == n
    and_ids = len(cycle) - cycle.index(taught.tok.seg_token_ids[-1]) - 1
    assert g.token_ids == (cycle * n)[:-and_ids]  # ends on the target's last codebook token
    b = generate_batch(taught.model, taught.tok, taught.feats, taught.prefix, ["Where is the cup?", "Hi"], sampling)
    assert [x.token_ids for x in b] == [g.token_ids] * 2 and {x.stop_reason for x in b} == {"max_targets"}


def test_repetition_stops_a_loop_of_plain_words(taught, loops):
    cycle = loops[1]
    g = run(taught, SamplingConfig(max_new_tokens=120, repetition_ngram=len(cycle), repetition_count=6,
                                   logits_processor=ScriptedAnswer(cycle, loop=True)))
    assert g.stop_reason == "repetition" and g.token_ids == cycle * 6
    # n-grams shorter than the loop's period never see it
    g = run(taught, SamplingConfig(max_new_tokens=40, repetition_ngram=len(cycle) - 1, repetition_count=6,
                                   logits_processor=ScriptedAnswer(cycle, loop=True)))
    assert g.stop_reason == "max_new_tokens" and len(g.token_ids) == 40


def test_repetition_reads_the_text_without_codebook_tokens(taught, loops):
    """"the cup [SEG0..5] and" is cut at the end of its 6th repeat, "the cup and" being the repeated n-gram."""
    cycle = loops[0]
    period = len([i for i in cycle if i not in taught.tok.seg_token_ids])
    g = run(taught, SamplingConfig(max_new_tokens=120, repetition_ngram=period, repetition_count=6,
                                   logits_processor=ScriptedAnswer(cycle, loop=True)))
    assert g.stop_reason == "repetition" and g.token_ids == cycle * 6 and len(g.targets) == 6
    g = run(taught, SamplingConfig(max_new_tokens=120, repetition_ngram=period - 1, repetition_count=6,
                                   logits_processor=ScriptedAnswer(cycle, loop=True)))
    assert g.stop_reason == "max_new_tokens"


def test_node_guards_cut_the_loop_on_every_path(taught, loops):
    """With the node's settings the target loop stops at its 4th repeat (repetition before max_targets=8);
    eager, compiled and batched decoding stop at the same token."""
    sampling = SamplingConfig(**{**GUARDED.__dict__, "logits_processor": ScriptedAnswer(loops[0], loop=True)})
    eager = run(taught, sampling)
    assert eager.stop_reason == "repetition" and eager.token_ids == loops[0] * 4
    compiled = run(taught, sampling, CompiledDecoder(taught.model, backend="aot_eager"))
    batch = generate_batch(taught.model, taught.tok, taught.feats, taught.prefix, ["Where is the cup?"], sampling)
    for g in (compiled, batch[0]):
        assert (g.token_ids, g.stop_reason) == (eager.token_ids, eager.stop_reason)


def test_legitimate_multi_target_answer_is_not_cut(taught):
    """The node's guards leave a three-target answer (codebook groups repeating by design) as it was, and so
    does a stricter repetition stop (2 repeats) with one target more allowed."""
    for sampling in (GUARDED, SamplingConfig(max_targets=4, repetition_ngram=8, repetition_count=2)):
        g = generate(taught.model, taught.tok, taught.feats, taught.prefix, Q_THREE, sampling)
        assert g.token_ids == taught.plans[Q_THREE] and g.stop_reason == "eos" and len(g.targets) == 3
    assert PLANNED[Q_THREE].count("[SEG0]") == 3


def test_same_name_targets_are_not_cut(taught):
    """A MUSE-style answer naming 3 instances alike, "the cup [SEG] the cup [SEG] the cup [SEG].": its text
    repeats "the cup" 3 times in a row, under the node's repetition_count of 4."""
    tok = taught.tok
    answer = (tok.encode("the cup", add_bos=False) + list(tok.seg_token_ids)) * 3 + tok.encode(".", add_bos=False)
    script = answer + [tok.eos_id]
    g = run(taught, SamplingConfig(**{**GUARDED.__dict__, "logits_processor": ScriptedAnswer(script, loop=True)}))
    assert g.token_ids == script and g.stop_reason == "eos" and len(g.targets) == 3


def test_repetition_stops_a_word_run_no_token_ngram_repeats(taught):
    """"cup, cup cup, cup": irregular commas, so no token n-gram repeats 4 times, but one word does (a loop
    seen on out-of-domain images); it is cut at the word's 4th repeat, and not with a count of 5."""
    tok = taught.tok
    cup, comma = tok.encode("cup", add_bos=False), tok.encode(",", add_bos=False)
    text = cup + comma + cup + cup + comma + cup
    script = text + [tok.eos_id]
    g = run(taught, SamplingConfig(**{**GUARDED.__dict__, "logits_processor": ScriptedAnswer(script, loop=True)}))
    assert g.stop_reason == "repetition" and g.token_ids == text
    g = run(taught, SamplingConfig(**{**GUARDED.__dict__, "repetition_count": 5,
                                      "logits_processor": ScriptedAnswer(script, loop=True)}))
    assert g.stop_reason == "eos" and g.token_ids == script


def test_ends_in_word_run():
    assert ends_in_word_run("The Bowl, bowl bowl, bowl,", 4)
    assert not ends_in_word_run("The bowl, bowl bowl, bowls", 4)
    assert not ends_in_word_run("bowl bowl bowl", 4)
    assert not ends_in_word_run("The cup, the cup and the cup.", 4)
