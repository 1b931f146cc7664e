"""`geomsafe evaluate`: toxic-output rate, over-refusal, trait probes and behavioural log-odds,
before vs after."""

from __future__ import annotations

import click
import torch

from geomsafe.cli.common import model_option, print_table
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate import EvalConfig, EvalResult
from geomsafe.evaluate import evaluate as run_evaluate
from geomsafe.evaluate.pairsets import NAMED_SETS
from geomsafe.evaluate.probes import DEFAULT_TRAITS
from geomsafe.options import split_csv

_D = EvalConfig()


class _Count(click.ParamType):
    """A count >= 0 or ``all`` (None)."""

    name = "N|all"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        if str(value).strip().lower() == "all":
            return None
        try:
            return int(value)
        except ValueError:
            raise GeomsafeError(
                f"--{param.name.replace('_', '-')} takes a number or 'all'"
            ) from None


COUNT = _Count()


def print_eval(result: EvalResult) -> None:
    headers, rows = result.table()
    print_table(headers, [list(r) for r in rows])
    for w in result.warnings:
        click.echo(f"note: {w}")


@click.command("evaluate")
@model_option
@click.option(
    "--adapter", type=click.Path(), help="peft LoRA adapter folder (evaluates base and adapted)."
)
@click.option("--baseline", type=click.Path(), help="eval.json (or its folder) to compare with.")
@click.option(
    "--atlas",
    type=click.Path(),
    help="FeatureAtlas folder: project responses on its harmful directions.",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False),
    help="Output folder (eval.json, generations.jsonl).",
)
@click.option("--overwrite", is_flag=True, help="Replace the results already in --out.")
@click.option(
    "--prompts",
    default=_D.prompts,
    show_default=True,
    help="builtin, rtp, em, xstest or a .jsonl/.yaml file; comma-separated.",
)
@click.option(
    "--n-prompts",
    type=COUNT,
    default=_D.n_prompts,
    show_default=True,
    help="Prompts drawn from the set ('all': every one; 0: no sampled generation).",
)
@click.option("--samples-per-prompt", type=int, default=_D.samples_per_prompt, show_default=True)
@click.option("--max-new-tokens", type=int, default=_D.max_new_tokens, show_default=True)
@click.option("--temperature", type=float, default=_D.temperature, show_default=True)
@click.option("--top-p", type=float, default=_D.top_p, show_default=True)
@click.option(
    "--threshold",
    type=float,
    default=_D.threshold,
    show_default=True,
    help="Toxicity score above which a response is toxic.",
)
@click.option(
    "--n-probe",
    type=int,
    default=_D.n_probe,
    show_default=True,
    help="Persona statements per trait (0: none).",
)
@click.option(
    "--traits",
    default=",".join(DEFAULT_TRAITS),
    show_default=True,
    help="Persona traits (file names in anthropic-evals/persona).",
)
@click.option(
    "--em-probes/--no-em-probes",
    default=_D.em_probes,
    show_default=True,
    help="Emergent-misalignment pivotal-token probes.",
)
@click.option(
    "--n-xstest",
    type=int,
    default=_D.n_xstest,
    show_default=True,
    help="XSTest safe prompts for over-refusal (0: skip).",
)
@click.option(
    "--logodds",
    default=",".join(_D.logodds),
    show_default=True,
    help=f"Response-pair sets for the log-odds rows ({', '.join(NAMED_SETS)}, "
    "concept:<name>, a .jsonl file; comma-separated; 'none'); style controls join their sets.",
)
@click.option(
    "--logodds-pairs",
    type=COUNT,
    default=_D.logodds_pairs,
    show_default=True,
    help="Pairs drawn per log-odds set ('all': every one; 0: no log-odds rows).",
)
@click.option(
    "--likelihood-only",
    is_flag=True,
    help="Only the rows read off likelihoods (log-odds, persona and EM probes): no sampled "
    "generation, no XSTest (same as --n-prompts 0 --n-xstest 0).",
)
@click.option("--batch-size", type=int, default=_D.batch_size, show_default=True)
@click.option("--n-boot", type=int, default=_D.n_boot, show_default=True)
@click.option("--seed", type=int, default=_D.seed, show_default=True)
@click.option(
    "--data-root",
    type=click.Path(),
    help="Public data folder (default: $GEOMSAFE_DATA or ../shared/data).",
)
@click.option(
    "--threads",
    type=int,
    help="torch CPU threads (default: torch's choice; on a busy machine 1 can be much faster).",
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def evaluate(
    model,
    adapter,
    baseline,
    atlas,
    out,
    overwrite,
    prompts,
    n_prompts,
    samples_per_prompt,
    max_new_tokens,
    temperature,
    top_p,
    threshold,
    n_probe,
    traits,
    em_probes,
    n_xstest,
    logodds,
    logodds_pairs,
    likelihood_only,
    batch_size,
    n_boot,
    seed,
    data_root,
    threads,
    no_progress,
) -> None:
    """Toxic-output rate, over-refusal, trait probes and behavioural log-odds, before vs after
    fine-tuning."""
    if threads is not None:
        if threads < 1:
            raise GeomsafeError(f"--threads must be at least 1, not {threads}")
        torch.set_num_threads(threads)
    result = run_evaluate(
        model,
        adapter=adapter,
        baseline=baseline,
        atlas=atlas,
        out=out,
        overwrite=overwrite,
        progress=not no_progress,
        prompts=prompts,
        n_prompts=0 if likelihood_only else n_prompts,
        samples_per_prompt=samples_per_prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        threshold=threshold,
        n_probe=n_probe,
        traits=tuple(split_csv(traits)),
        em_probes=em_probes,
        n_xstest=0 if likelihood_only else n_xstest,
        logodds=() if logodds.strip().lower() == "none" else logodds,
        logodds_pairs=logodds_pairs,
        batch_size=batch_size,
        n_boot=n_boot,
        seed=seed,
        data_root=data_root,
    )
    print_eval(result)
    click.echo(f"\n{result.seconds:.1f} s" + (f"; wrote {out}" if out else ""))
