"""training.probe_answer: forcing an answer reads the model's own distribution at every token."""
import numpy as np

from pixellm_ros.engine import Engine, EngineConfig, SamplingConfig
from training.data.dataset import answer_ids, answer_with_codebook
from training.probe_answer import forced_ids, main


def test_forcing_the_greedy_answer_finds_it_the_top_choice_everywhere(tiny):
    engine = Engine(EngineConfig(model_path=str(tiny[0]), device="cpu"))
    engine.set_image(np.random.default_rng(0).integers(0, 255, (64, 80, 3), np.uint8), image_key="noise")
    question = "Where is the red cup?"
    greedy = engine.ask(question, SamplingConfig(max_new_tokens=8)).token_ids
    steps = forced_ids(engine, question, greedy)
    assert [s.token_id for s in steps] == greedy
    assert all(s.top[0] == (s.token_id, s.probability) and 0 < s.probability <= 1 for s in steps)
    other = [(greedy[0] + 1) % len(engine.tokenizer)] + greedy[1:]  # not the model's first choice
    first = forced_ids(engine, question, other)[0]
    assert first.token_id != first.top[0][0] and first.probability < first.top[0][1]
    ids = answer_ids(engine.tokenizer, "The red cup {seg}.")
    assert ids[-1] == engine.tokenizer.eos_id and set(engine.tokenizer.seg_token_ids) <= set(ids)
    assert ids[:-1] == engine.tokenizer.encode(answer_with_codebook("The red cup {seg}."), add_bos=False)
    engine.close()


def test_cli_prints_one_line_per_answer_token(tiny, capsys):
    main(["--model", str(tiny[0]), "--question", "Where is the red cup?", "--answer", "The red cup {seg}."])
    lines = capsys.readouterr().out.splitlines()
    tokens = len(tiny[1].encode(answer_with_codebook("The red cup {seg}."), add_bos=False)) + 1  # + EOS
    assert len(lines) == tokens and all("top:" in ln for ln in lines)
