"""What an initialization may use: the task's architecture as a prompt for its bands, classes and size, the
generation ``generated`` would run for the trial (same anchors, data and seed), and a seeded target model."""

from __future__ import annotations

import torch

from geosane.bench import TrialContext, load_task

from .conftest import LIGHT, TASKS, config_for


def test_the_prompt_and_the_generation_are_the_trials(workspace: dict[str, str], data_root: str) -> None:
    spec = TASKS["eurosat_rgb-light"]
    data = load_task(spec.data, data_root, spec.train_limit, spec.selection_limit, spec.test_limit)
    context = TrialContext(config_for(workspace, data_root, [spec]), spec, data, seed=4, lr=spec.lrs[0])
    context.collection = workspace["collection"]
    assert context.prompt_uri() == "timm:test_resnet?in_chans=3&num_classes=10&channels=32,32,32,48"
    generator = context.generator()
    assert generator.config.seed == 4 and generator.config.data == spec.data
    assert generator.config.anchors == spec.anchors and generator.collection == workspace["collection"]
    assert generator.prompt.sizes == {"channels": tuple(LIGHT["channels"])}
    assert context.generator(anchors="prompt").anchors[0].fitted == "the prompt itself"
    first, again = context.target_model(), context.target_model()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in first.state_dict().items())  # seeded by the trial
