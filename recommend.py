"""Top-K recommendations for given users, straight from a packed .cerp file (eval.py writes them).

  python recommend.py --packed=runs/gowalla_mf/packed/sparsity_0.5000.cerp --users=3,17 --k=20
  python recommend.py --packed=FILE --users=3,17 --exclude=../shared/data/gowalla/train.txt --json

Prints one line per user, best item first: `user 3: 1234 (4.512), 77 (4.401), …` (item ids 0-based,
as in train.txt), or with --json one object per line: {"user": 3, "items": [...], "scores": [...]}.
--exclude (a LightGCN-format train.txt) removes those items from each user's list. Serves
dot-product backbones (MF); an NCF-MLP or LightGCN file, a user id out of range or a damaged file
gives one `error: …` line and exit status 2 (cerp_jax/recommend.py says what is composed when).
"""

import json

from absl import app
from absl import flags

from cerp_jax import cli
from cerp_jax import recommend as recommend_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("packed", None, "A packed .cerp file (WORKDIR/packed/<tag>.cerp).")
flags.DEFINE_string("users", None, "Comma-separated user ids, e.g. 3,17.")
flags.DEFINE_integer("k", 20, "Items per user.")
flags.DEFINE_string("exclude", "", "A LightGCN-format train.txt: its items are never recommended "
                    "to their user ('' = exclude nothing).")
flags.DEFINE_bool("json", False, "One JSON object per user instead of text lines.")
flags.DEFINE_integer("chunk_items", recommend_lib.DEFAULT_CHUNK_ITEMS, "Items scored per chunk.")
flags.mark_flags_as_required(["packed", "users"])


def parse_users(text: str) -> list:
  """``'3,17'`` → ``[3, 17]``.

  Raises:
    ValueError: an empty list or a token that is not an integer (naming it).
  """
  tokens = [t.strip() for t in text.split(",") if t.strip()]
  if not tokens:
    raise ValueError(f"--users={text!r}: expected comma-separated user ids, e.g. --users=3,17")
  for t in tokens:
    if not t.lstrip("-").isdigit():
      raise ValueError(f"--users={text}: {t!r} is not an integer user id")
  return [int(t) for t in tokens]


def format_line(rec: dict) -> str:
  """``user 3: 1234 (4.512), 77 (4.401), …`` for one of :meth:`Recommendations.as_dicts`."""
  items = ", ".join(f"{i} ({s:.4g})" for i, s in zip(rec["items"], rec["scores"]))
  return f"user {rec['user']}: {items}"


def run():
  out = recommend_lib.recommend(FLAGS.packed, parse_users(FLAGS.users), FLAGS.k,
                                FLAGS.exclude or None, FLAGS.chunk_items)
  for rec in out.as_dicts():
    print(json.dumps(rec) if FLAGS.json else format_line(rec))


def main(argv):
  if len(argv) > 1:
    cli.cli_error(f"unexpected arguments {argv[1:]} (flags are --name=value)")
  cli.run_cli(run)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
