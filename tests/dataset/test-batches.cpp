// Sequence layouts (pad, concat, pack) and their batches; a packed row computes what each of its
// documents computes alone, eager and compiled.
#include "peft/compile/compile.h"
#include "peft/data/batches.h"
#include "peft/peft-model.h"
#include "support.h"

using namespace peft;
using namespace peft::test;

namespace {

std::shared_ptr<TokenDataset> docs(const std::vector<std::vector<int64_t>> & rows) {
  return std::make_shared<TokenDataset>(TokenDataset::from_rows(rows, "rows"));
}

std::vector<int64_t> row(const at::Tensor & t, int64_t r) {
  at::Tensor x = t[r].contiguous();
  return std::vector<int64_t>(x.data_ptr<int64_t>(), x.data_ptr<int64_t>() + x.numel());
}

TEST(Batches, PadTruncatesAndMasks) {
  SequenceSet s(docs({{5, 6, 7}, {8, 9, 10, 11, 12, 13}}), "pad", 4, 0);
  ASSERT_EQ(s.size(), 2u);
  Batch b = s.batch({0, 1});
  EXPECT_EQ(row(b.input_ids, 0), (std::vector<int64_t>{5, 6, 7, 0}));
  EXPECT_EQ(row(b.input_ids, 1), (std::vector<int64_t>{8, 9, 10, 11}));
  EXPECT_EQ(row(b.attention_mask, 0), (std::vector<int64_t>{1, 1, 1, 0}));
  EXPECT_EQ(row(b.labels, 0), (std::vector<int64_t>{5, 6, 7, -100}));
  EXPECT_EQ(b.loss_tokens, 2 + 3);
  EXPECT_EQ(b.tokens, 7);
  EXPECT_FALSE(b.position_ids.defined());
  EXPECT_EQ(s.loss_tokens(0) + s.loss_tokens(1), b.loss_tokens);
}

TEST(Batches, ConcatCoversEveryTokenOnceInBlocks) {
  SequenceSet s(docs({{1, 2, 3}, {4, 5}, {6, 7, 8, 9, 10}}), "concat", 4);
  ASSERT_EQ(s.size(), 3u);  // 10 tokens in blocks of 4
  EXPECT_EQ(row(s.batch({0}).input_ids, 0), (std::vector<int64_t>{1, 2, 3, 4}));
  EXPECT_EQ(row(s.batch({1}).input_ids, 0), (std::vector<int64_t>{5, 6, 7, 8}));
  Batch last = s.batch({2});
  EXPECT_EQ(row(last.input_ids, 0), (std::vector<int64_t>{9, 10}));
  EXPECT_FALSE(last.segment_ids.defined());
  EXPECT_EQ(s.batch({0}).loss_tokens, 3);  // across documents, as run_clm
}

TEST(Batches, PackRestartsPositionsAndSeparatesDocuments) {
  SequenceSet s(docs({{1, 2, 3}, {4, 5}, {6, 7, 8, 9, 10}}), "pack", 6);
  ASSERT_EQ(s.size(), 2u);
  Batch b = s.batch({0, 1});
  EXPECT_EQ(row(b.input_ids, 0), (std::vector<int64_t>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(row(b.position_ids, 0), (std::vector<int64_t>{0, 1, 2, 0, 1, 0}));
  EXPECT_EQ(row(b.segment_ids, 0), (std::vector<int64_t>{0, 0, 0, 1, 1, 2}));
  // the first token of a document is never predicted from the previous document
  EXPECT_EQ(row(b.labels, 0), (std::vector<int64_t>{-100, 2, 3, -100, 5, -100}));
  EXPECT_EQ(row(b.input_ids, 1), (std::vector<int64_t>{7, 8, 9, 10, 0, 0}));
  EXPECT_EQ(row(b.position_ids, 1), (std::vector<int64_t>{0, 1, 2, 3, 0, 0}));
  EXPECT_EQ(b.loss_tokens, 3 + 3);
  EXPECT_EQ(s.loss_tokens(0) + s.loss_tokens(1), b.loss_tokens);
}

TEST(Batches, APackedRowComputesEachDocumentAsAlone) {
  auto base = load_model(golden_model("tiny-llama"));
  auto m = PeftModel::from_pretrained(base, golden_case("lora") + "/adapter");
  auto compiled = compile(*m);
  const std::vector<std::vector<int64_t>> rows = {{3, 17, 25, 9, 44}, {8, 2, 61}, {70, 11, 5, 6}};
  SequenceSet s(docs(rows), "pack", 12);
  ASSERT_EQ(s.size(), 1u);
  Batch b = s.batch({0});
  ForwardInput in;
  in.input_ids = b.input_ids;
  in.position_ids = b.position_ids;
  in.segment_ids = b.segment_ids;
  at::NoGradGuard g;
  for (int pass = 0; pass < 2; ++pass) {
    at::Tensor packed = pass == 0 ? m->forward(in) : compiled.forward(in);
    int64_t at = 0;
    for (const auto & r : rows) {
      at::Tensor ids = at::tensor(r, at::kLong).unsqueeze(0);
      at::Tensor alone = m->forward({ids});
      EXPECT_TRUE(all_close(packed.narrow(1, at, r.size()), alone, 1e-5, 1e-4)) << (pass ? "compiled" : "eager");
      at += r.size();
    }
  }
  // and without segments the second document would see the first: the check above can fail
  ForwardInput plain;
  plain.input_ids = b.input_ids;
  at::Tensor joined = m->forward(plain);
  at::Tensor second = m->forward({at::tensor(rows[1], at::kLong).unsqueeze(0)});
  EXPECT_FALSE(all_close(joined.narrow(1, 5, 3), second, 1e-5, 1e-4));
}

}  // namespace
