"""One error type per meaning: bad arguments are UsageError, run problems keep their own type."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from dscmr.cli.main import app
from dscmr.config import Config, DataConfig
from dscmr.errors import ConfigError, DscmrError, QueryError, UsageError

runner = CliRunner()


def test_usage_error_is_a_project_error_of_its_own():
    assert issubclass(UsageError, DscmrError) and not issubclass(UsageError, QueryError)


@pytest.mark.parametrize(
    "args, message",
    [
        (["bench", "eval", "--n", "1"], "--n must be >= 2"),
        (["bench", "search", "--n", "0"], "--n, --dim, --nq and --rounds must be positive"),
        (["bench", "hashing", "--methods", "sign,nope"], "--methods must be"),
    ],
)
def test_bad_benchmark_sizes_are_one_line_usage_errors(args, message):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert f"error: {message}" in res.output and "Traceback" not in res.output


def test_library_usage_errors():
    from dscmr.data.builtin import builtin_folder
    from dscmr.experiments.factorial import make_design, parse_factor
    from dscmr.indexing.build import BuildSpec
    from dscmr.indexing.from_run import check_modality

    with pytest.raises(UsageError, match="unknown built-in dataset"):
        builtin_folder("mnist")
    with pytest.raises(UsageError, match="--modality"):
        check_modality("audio")
    with pytest.raises(UsageError, match="unknown hash method"):
        BuildSpec(binary="nope")
    with pytest.raises(UsageError, match="needs a float index"):
        BuildSpec(float_factory=None)
    with pytest.raises(UsageError, match="--fraction"):
        make_design(2, "quarter")
    with pytest.raises(UsageError):
        parse_factor("model.dropout=0")
    with pytest.raises(ConfigError, match="unknown key"):  # a key the config lacks stays a config error
        parse_factor("model.nope=1,2", Config())


def test_encode_queries_keeps_the_runs_own_error_type(monkeypatch):
    import dscmr.encoders.extract as extract

    def broken(cfg):
        raise ConfigError("cannot load text model 'x'; check data.text_model")

    monkeypatch.setattr(extract, "text_encoder_for", broken)
    run = SimpleNamespace(config=Config(data=DataConfig(format="folder")), model=SimpleNamespace(txt_dim=384))
    with pytest.raises(ConfigError, match="cannot load text model"):
        extract.encode_queries(run, texts=["a cat"])
