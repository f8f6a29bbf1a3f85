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
