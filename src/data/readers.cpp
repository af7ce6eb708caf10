// The file readers: .txt paragraphs, .jsonl records, pre-tokenized .json rows (read_token_ids: the one
// reader of token-id files, for training data and for `peft forward --input-ids`). Each streams documents
// to a sink, so a file larger than memory is read once, line by line.
#include <fstream>

#include "peft/data/dataset.h"
#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/model/config.h"
#include "records.h"

namespace peft::data_detail {

namespace {

std::ifstream open_data(const std::string & path) {
  std::ifstream in(path, std::ios::binary);
  PEFT_CHECK(in.good(), "cannot read the data file '", path, "'");
  return in;
}

bool blank(const std::string & line) { return line.find_first_not_of(" \t\r\f\v") == std::string::npos; }

}  // namespace

void read_txt(const std::string & path, const TextEncoder & enc, DocSink & sink) {
  // documents are separated by blank lines; a very long one is tokenized in pieces cut at line ends
  constexpr size_t kPiece = 1 << 20;
  std::ifstream in = open_data(path);
  Encoded doc;
  std::string text;
  bool started = false;
  int64_t line_no = 0;
  auto flush = [&](bool end) {
    if (!text.empty()) {
      doc.append(enc, text, !started, true);
      started = true;
      text.clear();
    }
    if (end && started) {
      doc.append_eos(enc, str(path, ":", line_no));
      sink.add(doc.ids, doc.loss);
      doc = Encoded();
      started = false;
    }
  };
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (blank(line)) {
      flush(true);
      continue;
    }
    if (!text.empty() || started) text += '\n';
    text += line;
    if (text.size() >= kPiece) flush(false);
  }
  PEFT_CHECK(!in.bad(), "error reading the data file '", path, "'");
  flush(true);
}

void read_jsonl(const std::string & path, const TextEncoder & enc, DocSink & sink) {
  std::ifstream in = open_data(path);
  int64_t line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (blank(line)) continue;
    const std::string where = str(path, ":", line_no);
    PEFT_CHECK(line.size() <= kMaxJsonBytes, where, ": a record longer than ", kMaxJsonBytes, " bytes");
    nlohmann::json rec = parse_json(line, where);
    Encoded e = encode_record(enc, rec, where);
    sink.add(e.ids, e.loss);
  }
  PEFT_CHECK(!in.bad(), "error reading the data file '", path, "'");
}

void read_ids(const std::string & path, const TextEncoder & enc, DocSink & sink) {
  for (const auto & row : read_token_ids(path)) {
    Encoded e;
    for (int64_t id : row) {
      e.ids.push_back(static_cast<int32_t>(id));  // (checked against the model's vocabulary by the caller)
      e.loss.push_back(1);
    }
    sink.add(e.ids, e.loss);
  }
}

}  // namespace peft::data_detail

namespace peft {

std::vector<std::vector<int64_t>> read_token_ids(const std::string & path) {
  nlohmann::json j = read_json_file(path);
  PEFT_CHECK(j.is_array() && !j.empty(), path, ": expected a non-empty JSON array of arrays of token ids");
  std::vector<std::vector<int64_t>> rows;
  rows.reserve(j.size());
  for (size_t r = 0; r < j.size(); ++r) {
    const auto & row = j[r];
    PEFT_CHECK(row.is_array() && !row.empty(), path, ": row ", r, " must be a non-empty array of token ids");
    std::vector<int64_t> ids;
    ids.reserve(row.size());
    for (size_t k = 0; k < row.size(); ++k) {
      PEFT_CHECK(row[k].is_number_integer(), path, ": row ", r, " item ", k, " must be an integer token id");
      const int64_t id = row[k].get<int64_t>();
      PEFT_CHECK(id >= 0 && id <= INT32_MAX, path, ": row ", r, " item ", k, ": token id ", id, " is out of range");
      ids.push_back(id);
    }
    rows.push_back(std::move(ids));
  }
  return rows;
}

void check_token_ids(const std::string & path, const std::vector<std::vector<int64_t>> & rows, const ModelConfig & cfg,
                     int64_t extra, bool positions_only_if_learned) {
  const bool limit = cfg.learned_positions || !positions_only_if_learned;
  for (size_t i = 0; i < rows.size(); ++i) {
    const int64_t len = static_cast<int64_t>(rows[i].size());
    PEFT_CHECK(!limit || len + extra <= cfg.max_position_embeddings, path, ": row ", i, " has ", len, " tokens",
               extra ? str(" (+", extra, ")") : "", ", more than the model's ", cfg.max_position_embeddings,
               " positions (max_position_embeddings)");
    for (size_t k = 0; k < rows[i].size(); ++k) {
      PEFT_CHECK(rows[i][k] >= 0 && rows[i][k] < cfg.vocab_size, path, ": row ", i, ", position ", k, ": token id ",
                 rows[i][k], " is outside the model's vocabulary [0, ", cfg.vocab_size, ")");
    }
  }
}

}  // namespace peft
