import pytest
import torch

from fer_cli.errors import ModelError
from fer_cli.models.architectures import create_model, describe_model, list_models, model_options


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("in_channels", [1, 3])
def test_every_architecture_classifies_small_faces(name, in_channels):
    options = {"width": 8} if "width" in model_options(name) else {}
    model = create_model(name, num_classes=5, in_channels=in_channels, **options).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, in_channels, 48, 48))
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()
    assert describe_model(name)


def test_at_least_three_families_are_registered():
    assert {"vgg", "resnet18", "mini_xception"} <= set(list_models())


def test_unknown_names_and_options_list_the_valid_ones():
    with pytest.raises(ModelError, match="valid ones: .*vgg") as error:
        create_model("vgg16", num_classes=7)
    assert "Did you mean 'vgg'" in str(error.value)
    with pytest.raises(ModelError, match="no option depth; valid options: width=64"):
        create_model("vgg", num_classes=7, depth=3)


@pytest.mark.parametrize("width", [-5, 0, 1, 513, 10**6, 2.5, True])
def test_architecture_options_are_bounded(width):
    """A width is a memory lever (10^6 would allocate terabytes): refused before anything is built."""
    with pytest.raises(ModelError, match="width"):
        create_model("vgg", num_classes=3, width=width)
    with pytest.raises(ModelError, match="dropout"):
        create_model("vgg", num_classes=3, width=4, dropout=1.5)


@pytest.mark.parametrize("side", [8, 15, 257, 300])
def test_input_sides_outside_16_to_256_are_refused_before_a_forward_pass(side):
    from fer_cli.models.architectures import check_input_size

    with pytest.raises(ModelError, match="16 to 256 px"):
        check_input_size("vgg", {"width": 2}, side, 1)


def test_training_size_option_has_the_same_bounds():
    from typer.testing import CliRunner

    from fer_cli.cli.app import app

    for side in ("15", "257"):
        done = CliRunner().invoke(app, ["train", ".", "--size", side, "--out", "never.pt"])
        assert done.exit_code == 2 and "--size" in done.output, done.output
