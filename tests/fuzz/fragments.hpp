#pragma once
// The fuzz input as a socket would deliver it: the first byte picks a fragment size (1 to
// 64 bytes), the rest is the input, handed out in pieces of that size. Parsers promise the
// same outcome at every fragment size; the drivers check it with this.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace sluice::fuzz {

class Fragments {
  public:
    static std::optional<Fragments> of(const std::uint8_t* data, std::size_t size) {
        if (size == 0) {
            return std::nullopt;
        }
        return Fragments(std::string_view(reinterpret_cast<const char*>(data + 1), size - 1),
                         1 + data[0] % 64);
    }

    std::string_view input() const { return input_; }

    class iterator {
      public:
        iterator(std::string_view input, std::size_t step, std::size_t pos)
            : input_(input), step_(step), pos_(pos) {}
        std::string_view operator*() const { return input_.substr(pos_, step_); }
        iterator& operator++() {
            pos_ = pos_ + step_ < input_.size() ? pos_ + step_ : input_.size();
            return *this;
        }
        bool operator!=(const iterator& o) const { return pos_ != o.pos_; }

      private:
        std::string_view input_;
        std::size_t step_;
        std::size_t pos_;
    };
    iterator begin() const { return {input_, step_, 0}; }
    iterator end() const { return {input_, step_, input_.size()}; }

  private:
    Fragments(std::string_view input, std::size_t step) : input_(input), step_(step) {}

    std::string_view input_;
    std::size_t step_;
};

}  // namespace sluice::fuzz
