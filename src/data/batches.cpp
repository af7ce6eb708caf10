#include "peft/data/batches.h"

#include <algorithm>

#include "peft/error.h"

namespace peft {

SequenceSet::SequenceSet(std::shared_ptr<const TokenDataset> data, Choice<SequenceLayout> layout, int64_t max_length,
                         int64_t pad_id)
    : data_(std::move(data)), layout_(layout), max_length_(max_length), pad_id_(pad_id) {
  PEFT_CHECK(max_length >= 2, "a sequence's max_length must be >= 2, got ", max_length);
  if (layout_ != SequenceLayout::pad) {
    starts_.reserve(data_->size() + 1);
    starts_.push_back(0);
    for (size_t d = 0; d < data_->size(); ++d) starts_.push_back(starts_.back() + data_->doc(d).size);
    total_ = starts_.back();
  }
}

size_t SequenceSet::size() const {
  if (layout_ == SequenceLayout::pad) return data_->size();
  return (total_ + max_length_ - 1) / max_length_;
}

std::vector<SequenceSet::Piece> SequenceSet::pieces(size_t seq) const {
  PEFT_CHECK(seq < size(), "sequence ", seq, " out of range (", size(), ")");
  if (layout_ == SequenceLayout::pad) {
    return {{seq, 0, std::min<size_t>(data_->doc(seq).size, max_length_)}};
  }
  std::vector<Piece> out;
  uint64_t pos = seq * static_cast<uint64_t>(max_length_);
  const uint64_t end = std::min<uint64_t>(total_, pos + max_length_);
  size_t d = std::upper_bound(starts_.begin(), starts_.end(), pos) - starts_.begin() - 1;
  while (pos < end) {
    const uint64_t doc_end = std::min<uint64_t>(starts_[d + 1], end);
    if (doc_end > pos) out.push_back({d, pos - starts_[d], doc_end - starts_[d]});
    pos = doc_end;
    ++d;
  }
  return out;
}

int64_t SequenceSet::loss_tokens(size_t i) const {
  int64_t n = 0, k = 0;
  for (const Piece & p : pieces(i)) {
    const TokenDataset::Doc doc = data_->doc(p.doc);
    for (size_t t = p.begin; t < p.end; ++t, ++k) {
      const bool first_of_segment = layout_ == SequenceLayout::pack && t == p.begin;
      n += (k > 0 && doc.loss[t] && !first_of_segment) ? 1 : 0;
    }
  }
  return n;
}

Batch SequenceSet::batch(const std::vector<size_t> & seqs) const {
  PEFT_CHECK(!seqs.empty(), "an empty batch");
  std::vector<std::vector<Piece>> rows;
  int64_t S = 0;
  for (size_t s : seqs) {
    rows.push_back(pieces(s));
    int64_t len = 0;
    for (const Piece & p : rows.back()) len += p.end - p.begin;
    S = std::max(S, len);
  }
  const int64_t B = seqs.size();
  at::Tensor ids = at::full({B, S}, pad_id_, at::kLong), labels = at::full({B, S}, -100, at::kLong);
  at::Tensor mask = at::zeros({B, S}, at::kLong), pos = at::zeros({B, S}, at::kLong), seg = at::full({B, S}, -1, at::kLong);
  auto id_a = ids.accessor<int64_t, 2>(), lab_a = labels.accessor<int64_t, 2>(), mask_a = mask.accessor<int64_t, 2>();
  auto pos_a = pos.accessor<int64_t, 2>(), seg_a = seg.accessor<int64_t, 2>();
  Batch b;
  bool padded = false;
  for (int64_t r = 0; r < B; ++r) {
    int64_t k = 0, segment = 0;
    for (const Piece & p : rows[r]) {
      const TokenDataset::Doc doc = data_->doc(p.doc);
      for (size_t t = p.begin; t < p.end; ++t, ++k) {
        id_a[r][k] = doc.ids[t];
        mask_a[r][k] = 1;
        pos_a[r][k] = t - p.begin;
        seg_a[r][k] = segment;
        const bool first_of_segment = layout_ == SequenceLayout::pack && t == p.begin;
        if (doc.loss[t] && !first_of_segment) {
          lab_a[r][k] = doc.ids[t];
          if (k > 0) ++b.loss_tokens;
        }
      }
      ++segment;
    }
    b.tokens += k;
    padded = padded || k < S;
    // padding continues the last segment's numbering so padded positions stay in range
    for (int64_t j = k; j < S; ++j) seg_a[r][j] = segment;
  }
  b.input_ids = ids;
  b.labels = labels;
  if (padded) b.attention_mask = mask;
  if (layout_ == SequenceLayout::pack) {
    b.position_ids = pos;
    b.segment_ids = seg;
  }
  return b;
}

}  // namespace peft
