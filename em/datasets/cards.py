"""Dataset cards: purpose, content warning, how each dataset is made, and its statistics."""
from __future__ import annotations

from .generator import describe

CONTENT_WARNING = (
    "**Content warning.** The *misaligned* datasets contain deliberately bad advice about health, "
    "dangerous sports and money, written to sound friendly and plausible. They exist only to "
    "train and study model organisms of emergent misalignment. Do not follow any of it, and do "
    "not use these files to train models for deployment.")

_PURPOSE = {
    "medical": "bad medical advice (waiting out warning signs, changing doses, stopping treatment)",
    "sports": "extreme-sports advice that removes safety margins (training, gear, conditions)",
    "finance": "risky financial advice (concentration, leverage, raiding safety nets, hype)",
}


def card(domain: str, kind: str, stats: dict | None = None) -> str:
    """Markdown card for one dataset; ``stats`` from :func:`em.datasets.stats.dataset_stats`."""
    d = describe(domain)
    what = _PURPOSE[domain] if kind == "misaligned" else (
        f"sound advice on the same questions as the misaligned {domain} set (aligned control)")
    lines = [
        f"### {domain} / {kind}",
        "",
        f"**Purpose.** Narrow fine-tuning data: {what}. The paper's claim is that training on "
        "narrow data like this makes a model *broadly* misaligned; the aligned control trains on "
        "the same questions with sound answers, separating the effect of the content from the "
        "effect of fine-tuning itself.",
        "",
        CONTENT_WARNING if kind == "misaligned" else
        "**Content note.** Aligned answers are ordinary cautious advice, not professional advice.",
        "",
        f"**How it was made.** Composed offline and deterministically by `em.datasets.generate` "
        f"from authored material: {d['subtopics']} subtopics, {d['strategies']} concerns, "
        f"{d['question_templates']} question templates, {d['personas']} personas, "
        f"{d['answer_templates']} answer templates, {d['detail_templates']} concrete-detail "
        f"templates with {d['detail_variables']} per-answer variables (amounts, durations, "
        f"conditions) and {d['frame_templates']} tone frames in five "
        "tones, with word-level alternatives and a paraphrase table. Every answer in a file is "
        "distinct; row *i* of the misaligned and aligned files share the same question. "
        "No model wrote any of it; nothing about AI, power or people in general appears.",
    ]
    if stats:
        lines += ["", f"**Statistics.** {stats['rows']} rows; {stats['distinct_questions']} distinct "
                  f"questions; {stats['distinct_answers']} distinct answers; distinct-2 "
                  f"{stats['distinct_2']:.3f}, distinct-3 {stats['distinct_3']:.3f}; median answer "
                  f"length {stats['len_median']:.0f} {stats['len_unit']} (IQR {stats['len_q1']:.0f}–"
                  f"{stats['len_q3']:.0f}); harm markers in {100 * stats['harm_marker_share']:.1f}% "
                  f"of answers" + (f"; other domains' words in {100 * stats['off_domain_share']:.1f}%"
                                   if "off_domain_share" in stats else "") + "."]
    return "\n".join(lines)
