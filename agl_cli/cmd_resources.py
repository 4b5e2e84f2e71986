"""agl resources add / update / list / show."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from store_fs.errors import ExitCode

from . import completion, output
from .exit_codes import CliError
from .inputs import read_object
from .params import Engine as EngineName
from .state import CliState, run
from .tables import RESOURCE_COLUMNS

resources_app = typer.Typer(
    help="""Publish and inspect versioned resources (prompt templates, LLM endpoints).

\b
Examples:
  agl resources add --template "Answer briefly: {any_question}"
  agl resources add --llm-endpoint http://localhost:8000/v1 --model qwen --name llm
  agl resources list
  agl resources show latest | jq -r '.resources.main_prompt.template'
""",
    no_args_is_help=True,
)


def _named_resources(
    body: str | None,
    name: str,
    template: str | None,
    template_file: Path | None,
    engine: str,
    llm_endpoint: str | None,
    model: str | None,
) -> dict[str, Any]:
    # One source of resources per call: given together, all but one were dropped without a word.
    given = [
        option
        for option, value in (
            ("--body", body),
            ("--template", template),
            ("--template-file", template_file),
            ("--llm-endpoint/--model", llm_endpoint if llm_endpoint is not None else model),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise CliError(f"give one of {', '.join(given)}, not several (one resource per call, or --body)")
    if body is not None:
        data = read_object(body, "--body")
        assert data is not None
        return data
    if template_file is not None:
        try:
            template = template_file.read_text(encoding="utf-8")
        except OSError as err:
            raise CliError(f"cannot read {template_file}: {err.strerror}") from None
        except UnicodeDecodeError as err:
            raise CliError(f"{template_file} is not UTF-8 text (byte {err.start})") from None
    if template is not None:
        return {name: {"resource_type": "prompt_template", "template": template, "engine": engine}}
    if llm_endpoint is not None or model is not None:
        if not (llm_endpoint and model):
            raise CliError("an LLM resource needs both --llm-endpoint and --model")
        return {name: {"resource_type": "llm", "endpoint": llm_endpoint, "model": model}}
    raise CliError("nothing to publish: give --template, --template-file, --llm-endpoint/--model or --body")


Body = Annotated[str | None, typer.Option("--body", help="NamedResources as a JSON object, or @FILE.")]
Name = Annotated[str, typer.Option("--name", help="Resource name for --template/--llm-endpoint.")]
Template = Annotated[str | None, typer.Option("--template", help="Prompt template text.")]
TemplateFile = Annotated[
    Path | None, typer.Option("--template-file", help="Read the prompt template from a file.")
]
Engine = Annotated[EngineName, typer.Option("--engine", help="Template engine.")]
Endpoint = Annotated[str | None, typer.Option("--llm-endpoint", help="OpenAI-compatible base URL.")]
Model = Annotated[str | None, typer.Option("--model", help="Model name for --llm-endpoint.")]


@resources_app.command("add")
def add(
    ctx: typer.Context,
    body: Body = None,
    name: Name = "main_prompt",
    template: Template = None,
    template_file: TemplateFile = None,
    engine: Engine = "f-string",
    llm_endpoint: Endpoint = None,
    model: Model = None,
) -> None:
    """Publish a new snapshot (it becomes the latest; new rollouts use it).

    \b
    agl resources add --template "Answer briefly: {any_question}"
    agl resources add --body @resources.json
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    resources = _named_resources(body, name, template, template_file, engine, llm_endpoint, model)
    update = run(store.add_resources(resources))
    cli.out.emit_json(update)
    output.info(f"published {update.resources_id}")


@resources_app.command("update")
def update(
    ctx: typer.Context,
    resources_id: Annotated[
        str,
        typer.Argument(
            help="Snapshot to update (created if new), or 'latest'.", autocompletion=completion.resources_ids
        ),
    ],
    body: Body = None,
    name: Name = "main_prompt",
    template: Template = None,
    template_file: TemplateFile = None,
    engine: Engine = "f-string",
    llm_endpoint: Endpoint = None,
    model: Model = None,
) -> None:
    """Replace a snapshot's resources (its version goes up by one; it becomes the latest).

    \b
    agl resources update prompt-v1 --template-file prompt.txt
    agl resources update latest --template "Answer in one word: {any_question}"
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    resources = _named_resources(body, name, template, template_file, engine, llm_endpoint, model)
    if resources_id == "latest":
        # As in `show`: a snapshot named "latest" could never be shown once another is published.
        latest = run(store.get_latest_resources())
        if latest is None:
            raise CliError(
                "no resources yet, so no 'latest' to update (agl resources add publishes one)",
                ExitCode.NOT_FOUND,
            )
        resources_id = latest.resources_id
    result = run(store.update_resources(resources_id, resources))
    cli.out.emit_json(result)
    output.info(f"{result.resources_id} is now version {result.version}")


@resources_app.command("list")
def list_resources(ctx: typer.Context) -> None:
    """Every snapshot at its newest version, oldest first.

    \b
    agl resources list | jq -c '{resources_id, version}'
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    cli.out.emit_records(list(run(store.query_resources())), RESOURCE_COLUMNS)


@resources_app.command("show")
def show(
    ctx: typer.Context,
    resources_id: Annotated[
        str, typer.Argument(help="Snapshot id, or 'latest'.", autocompletion=completion.resources_ids)
    ] = "latest",
) -> None:
    """One snapshot (the latest by default).

    \b
    agl resources show latest | jq -r '.resources.main_prompt.template'
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    if resources_id == "latest":
        result = run(store.get_latest_resources())
        if result is None:
            raise CliError("no resources published yet", ExitCode.NOT_FOUND)
    else:
        result = run(store.get_resources_by_id(resources_id))
        if result is None:
            from store_fs import ResourcesNotFoundError

            raise ResourcesNotFoundError(resources_id)
    cli.out.emit_json(result)
