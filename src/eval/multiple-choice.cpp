#include "peft/eval/multiple-choice.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>

#include <nlohmann/json.hpp>

#include "peft/error.h"
#include "peft/tokenizer/tokenizer.h"
#include "peft/util/json-fields.h"

namespace peft::eval {

std::vector<ChoiceItem> read_choice_task(const std::string & path) {
  std::ifstream in(path, std::ios::binary);
  PEFT_CHECK(in.good(), "cannot read the task file ", path);
  std::vector<ChoiceItem> items;
  std::string line;
  for (int64_t no = 1; std::getline(in, line); ++no) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = str(path, ":", no, ": ");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception & e) {
      throw Error(str(where, "not valid JSON (", e.what(), ")"));
    }
    PEFT_CHECK(j.is_object(), where, "a task line must be a JSON object {\"context\", \"choices\", \"gold\"}");
    const JsonFields f(j, [&](const char * k, const std::string & m) { throw Error(str(where, "field '", k, "' ", m)); });
    ChoiceItem it;
    if (!f.has("context")) f.fail("context", "is missing");
    it.context = f.string("context");
    if (!f.has("choices") || !f.at("choices").is_array() || f.at("choices").size() < 2) {
      f.fail("choices", "must be a list of at least 2 strings");
    }
    for (const auto & c : f.at("choices")) {
      if (!c.is_string() || c.get<std::string>().empty()) f.fail("choices", "must hold non-empty strings");
      it.choices.push_back(c.get<std::string>());
    }
    if (!f.has("gold")) f.fail("gold", "is missing");
    it.gold = f.integer("gold", 0, static_cast<int64_t>(it.choices.size()) - 1);
    items.push_back(std::move(it));
  }
  PEFT_CHECK(!items.empty(), path, ": no task items (JSON lines {\"context\", \"choices\", \"gold\"})");
  return items;
}

EncodedPair encode_pair(const Tokenizer & tok, std::string context, std::string continuation) {
  const size_t keep = context.find_last_not_of(' ');
  const size_t n_spaces = keep == std::string::npos ? context.size() : context.size() - keep - 1;
  if (n_spaces > 0) {
    continuation = context.substr(context.size() - n_spaces) + continuation;
    context.resize(context.size() - n_spaces);
  }
  EncodedPair p;
  p.context = tok.encode(context, /*add_special=*/true);
  const std::vector<int64_t> whole = tok.encode(context + continuation, /*add_special=*/true);
  const size_t n = std::min(p.context.size(), whole.size());
  p.continuation.assign(whole.begin() + static_cast<std::ptrdiff_t>(n), whole.end());
  return p;
}

namespace {

// The sample standard deviation of 0/1 values over sqrt(n) (lm-evaluation-harness's mean_stderr).
double mean_stderr(const std::vector<double> & v) {
  const double n = static_cast<double>(v.size());
  if (v.size() < 2) return 0.0;
  double mean = 0;
  for (double x : v) mean += x;
  mean /= n;
  double ss = 0;
  for (double x : v) ss += (x - mean) * (x - mean);
  return std::sqrt(ss / (n - 1)) / std::sqrt(n);
}

// Characters (code points) of UTF-8 text: Python's len(), which acc_norm divides by.
size_t characters(const std::string & s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

size_t argmax(const std::vector<double> & v) {
  return static_cast<size_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

}  // namespace

ChoiceResult multiple_choice(const Scorer & model, const Tokenizer & tok, const std::vector<ChoiceItem> & items,
                             int64_t max_length) {
  PEFT_CHECK(max_length >= 2, "multiple choice needs rows of at least 2 tokens, got a limit of ", max_length);
  const auto t0 = std::chrono::steady_clock::now();
  ChoiceResult r;
  std::vector<double> acc, acc_norm;
  for (size_t i = 0; i < items.size(); ++i) {
    const ChoiceItem & it = items[i];
    std::vector<std::vector<int64_t>> rows;
    std::vector<int64_t> from;  // the first scored position of each row
    for (const std::string & c : it.choices) {
      EncodedPair p = encode_pair(tok, it.context, c);
      PEFT_CHECK(!p.context.empty(), "item ", i + 1, ": the context encodes to no token (the tokenizer adds no "
                 "beginning-of-text token), so nothing predicts the choice's first token");
      PEFT_CHECK(!p.continuation.empty(), "item ", i + 1, ": the choice \"", c, "\" encodes to no token after the context");
      std::vector<int64_t> row = p.context;
      row.insert(row.end(), p.continuation.begin(), p.continuation.end());
      int64_t start = static_cast<int64_t>(p.context.size());
      const int64_t cut = static_cast<int64_t>(row.size()) - max_length;
      if (cut > 0) {
        PEFT_CHECK(static_cast<int64_t>(p.continuation.size()) < max_length, "item ", i + 1, ": the choice \"", c,
                   "\" alone is ", p.continuation.size(), " tokens, the model's context ", max_length);
        row.erase(row.begin(), row.begin() + cut);
        start -= cut;
      }
      from.push_back(start);
      rows.push_back(std::move(row));
    }
    // right padding: a causal model's real tokens never see the padding after them
    size_t L = 0;
    for (const auto & row : rows) L = std::max(L, row.size());
    const int64_t B = static_cast<int64_t>(rows.size());
    at::Tensor ids = at::zeros({B, static_cast<int64_t>(L)}, at::kLong);
    at::Tensor mask = at::zeros({B, static_cast<int64_t>(L)}, at::kBool);
    auto ia = ids.accessor<int64_t, 2>();
    auto ma = mask.accessor<bool, 2>();
    for (int64_t b = 0; b < B; ++b) {
      for (size_t t = 0; t < rows[b].size(); ++t) {
        ia[b][static_cast<int64_t>(t)] = rows[b][t];
        ma[b][static_cast<int64_t>(t)] = static_cast<int64_t>(t) >= from[b];
      }
    }
    Scores sc;
    score_tokens(model, ids, mask, sc);
    std::vector<double> ll(rows.size(), 0.0), norm(rows.size(), 0.0);
    size_t k = 0;
    for (int64_t b = 0; b < B; ++b) {
      for (size_t t = static_cast<size_t>(from[b]); t < rows[b].size(); ++t) ll[b] += sc.logprob[k++];
      norm[b] = ll[b] / static_cast<double>(characters(it.choices[b]));
    }
    acc.push_back(static_cast<int64_t>(argmax(ll)) == it.gold ? 1.0 : 0.0);
    acc_norm.push_back(static_cast<int64_t>(argmax(norm)) == it.gold ? 1.0 : 0.0);
    r.loglikelihood.push_back(std::move(ll));
  }
  r.items = static_cast<int64_t>(items.size());
  for (double a : acc) r.acc += a;
  for (double a : acc_norm) r.acc_norm += a;
  if (r.items > 0) {
    r.acc /= static_cast<double>(r.items);
    r.acc_norm /= static_cast<double>(r.items);
  }
  r.acc_stderr = mean_stderr(acc);
  r.acc_norm_stderr = mean_stderr(acc_norm);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace peft::eval
