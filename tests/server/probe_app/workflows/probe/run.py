"""A tiny Cytomine app used by the server tests to exercise the launch path end to end.

It does what the real apps do, in miniature: CytomineJob.from_cli, progress, annotation
listing with filters, concurrent crop download, an attached file, a property, an algo
annotation with an algo term (rate), job data. ``--crash true`` dies before the job starts;
``--fail true`` raises inside the job (CytomineJob then sets it FAILED with the message).
"""

import json
import os
import sys
import tempfile

from cytomine import CytomineJob
from cytomine.models import AlgoAnnotationTerm, Annotation, AnnotationCollection, AttachedFile, JobData, Property


def main(argv):
    with CytomineJob.from_cli(argv, configure_logging=False) as cj:
        params = cj.parameters
        if params.crash:
            raise SystemExit("unreachable: crash is handled before")  # pragma: no cover
        cj.job.update(progress=10, statusComment="Listing annotations")
        terms = [int(t) for t in params.cytomine_id_terms.split(",")] if params.cytomine_id_terms else None
        annotations = AnnotationCollection(
            project=params.cytomine_id_project, terms=terms, showWKT=True, showTerm=True
        ).fetch()
        work = tempfile.mkdtemp()
        dumped = annotations.dump_crops(os.path.join(work, "{term}", "{id}.png"), n_workers=4)
        for _ in cj.monitor(range(3), start=20, end=80, prefix="Working"):
            pass
        if params.fail:
            raise ValueError("Probe failure requested: " + "x" * 400)
        result = os.path.join(work, "result.json")
        with open(result, "w") as f:
            json.dump(
                {
                    "argv": argv,
                    "threshold": params.threshold,
                    "label": params.label,
                    "n_annotations": len(annotations),
                    "n_crops": len(dumped),
                    "user_is_job": bool(cj.current_user.algo),
                },
                f,
            )
        AttachedFile(cj.job, filename=result).upload()
        Property(cj.job, key="n_annotations", value=str(len(annotations))).save()
        first = annotations[0]
        created = Annotation(location=first.location, id_image=first.image, id_project=first.project).save()
        AlgoAnnotationTerm(first.id, first.term[0], rate=0.75).save()
        data = JobData(cj.job.id, "summary", "summary.txt").save()
        summary = os.path.join(work, "summary.txt")
        with open(summary, "w") as f:
            f.write(f"{len(annotations)} annotations, algo annotation {created.id}\n")
        data.upload(summary)
        print(f"probe done: {len(annotations)} annotations, {len(dumped)} crops", flush=True)
        cj.job.update(progress=100, statusComment="Probe finished")
    return 0


if __name__ == "__main__":
    if "--crash" in sys.argv and sys.argv[sys.argv.index("--crash") + 1] == "true":
        print("about to crash", flush=True)
        raise RuntimeError("crash requested before the job started")
    sys.exit(main(sys.argv[1:]))
