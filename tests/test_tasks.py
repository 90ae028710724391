"""The task table: every task declared once and checked when declared."""
import pytest

from pixelllm_d2.tasks import PREDICTOR_TASKS, TASKS, Task, get_task, task_names


def test_builtin_tasks():
    assert list(TASKS) == ["caption", "trace", "region", "refer", "densecap"]
    assert PREDICTOR_TASKS == ("caption", "region", "refer", "densecap")
    assert task_names(text_loss=False) == ("refer",)
    assert task_names(text_at_test="given") == ("trace", "refer")
    assert get_task("region").augmentation == "REGION"


@pytest.mark.parametrize("field, value", [("queries", "boxes"), ("prompt_box", "proposal"), ("text_at_test", "forced"),
                                          ("token_targets", "trace")])
def test_a_task_with_an_unknown_kind_is_refused_when_declared(field, value):
    kwargs = dict(queries="regions", prompt="REGION", prompt_box="query", context_text=False, text_loss=True,
                  text_at_test="generated", token_targets="query_box", box_at_last_word=False, evaluator="loca",
                  predictor=True)
    kwargs[field] = value
    with pytest.raises(ValueError, match=f"task 'x': {field} must be one of"):
        Task("x", **kwargs)


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown task 'captions'; known tasks: caption, trace, region, refer, densecap"):
        get_task("captions")
