"""The progress line names skipped records; the log names each skip reason once."""
import logging

from kosmos_jax.training import metric_writers


def test_progress_line_counts_skipped_records_and_logs_new_reasons(tmp_path, caplog):
  logger = metric_writers.MetricsLogger(str(tmp_path), total_steps=10)
  with caplog.at_level(logging.WARNING):
    line = logger.progress(1, {"train/loss": 2.0, "data/image_corrupt": 3,
                               "data/truncated_to_row_length": 50, "data/text_empty": 0})
    assert "skipped 3 records" in line
    line = logger.progress(2, {"train/loss": 1.5, "data/image_corrupt": 4, "data/json_malformed": 1})
    assert "skipped 5 records" in line
  warnings = [r.getMessage() for r in caplog.records if "records skipped" in r.getMessage()]
  assert warnings == ["data: records skipped as image_corrupt (3) (counts by reason in the data/* "
                      "metrics)", "data: records skipped as json_malformed (1) (counts by reason "
                      "in the data/* metrics)"]
  assert "skipped" not in logger.progress(3, {"train/loss": 1.0, "data/truncated_to_row_length": 9})
  logger.close()
