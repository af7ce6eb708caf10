#include "peft/train/plot.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "peft/error.h"
#include "peft/io/files.h"

namespace peft {

namespace {

// gnuplot strings are single-quoted: a quote inside is doubled
std::string quoted(const std::string & s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

std::string temp_beside(const std::string & target, const std::string & suffix) {
  std::string t = parent_of(target) + "/." + base_of(target) + ".tmp-XXXXXX" + suffix;
  std::vector<char> name(t.begin(), t.end());
  name.push_back('\0');
  const int fd = ::mkostemps(name.data(), static_cast<int>(suffix.size()), O_CLOEXEC);
  PEFT_CHECK(fd >= 0, "cannot create a temp file beside '", target, "': ", std::strerror(errno));
  ::close(fd);
  return name.data();
}

}  // namespace

void plot_train_log(const std::string & log_file, const std::string & png_file) {
  std::ifstream in(log_file);
  PEFT_CHECK(in.good(), "cannot read the log '", log_file, "'");
  std::ostringstream train, eval;
  int64_t steps = 0, evals = 0, line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (line.empty()) continue;
    const auto j = parse_json(line, str(log_file, ":", line_no));
    if (!j.is_object() || !j.contains("step")) continue;
    if (j.contains("loss") && j["loss"].is_number()) {
      train << j["step"].get<int64_t>() << " " << j["loss"].get<double>() << " " << j.value("lr", 0.0) << "\n";
      ++steps;
    } else if (j.contains("eval_loss") && j["eval_loss"].is_number()) {
      eval << j["step"].get<int64_t>() << " " << j["eval_loss"].get<double>() << "\n";
      ++evals;
    }
  }
  PEFT_CHECK(steps > 0, log_file, ": no training step to plot");
  const std::string data = temp_beside(png_file, ".dat"), edata = temp_beside(png_file, ".eval.dat");
  const std::string png = temp_beside(png_file, ".png"), messages = temp_beside(png_file, ".txt");
  auto cleanup = [&] {
    ::unlink(data.c_str());
    ::unlink(edata.c_str());
    ::unlink(png.c_str());
    ::unlink(messages.c_str());
  };
  std::ofstream(data) << train.str();
  std::ofstream(edata) << eval.str();
  std::ostringstream script;
  script << "set terminal pngcairo size 960,540 font ',10'\n"
         << "set output " << quoted(png) << "\n"
         << "set title " << quoted("training run: " + base_of(log_file)) << " noenhanced\n"
         << "set xlabel 'step'\nset ylabel 'loss'\nset y2label 'learning rate'\n"
         << "set ytics nomirror\nset y2tics\nset format y2 '%.1e'\nset grid\nset key top right\n"
         << "plot " << quoted(data) << " using 1:2 with lines lw 2 title 'train loss'";
  if (evals > 0) script << ", " << quoted(edata) << " using 1:2 with linespoints lw 2 pt 7 title 'eval loss'";
  script << ", " << quoted(data) << " using 1:3 axes x1y2 with lines dt 2 title 'learning rate'\n";
  // gnuplot's messages go to a file: shown only when it fails
  FILE * gp = ::popen(("gnuplot >/dev/null 2>" + quoted(messages)).c_str(), "w");
  if (gp == nullptr) {
    cleanup();
    fail("cannot run gnuplot (install Debian's gnuplot-nox)");
  }
  std::fputs(script.str().c_str(), gp);
  const int status = ::pclose(gp);
  if (status != 0) {
    std::string said;
    try {
      said = read_file(messages);
    } catch (const Error &) {
    }
    cleanup();
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    fail(code == 127 ? std::string("gnuplot not found (install Debian's gnuplot-nox)")
                     : str("gnuplot failed (exit ", code, "): ", said));
  }
  if (::rename(png.c_str(), png_file.c_str()) != 0) {
    cleanup();
    fail(str("cannot write the plot '", png_file, "': ", std::strerror(errno)));
  }
  ::unlink(data.c_str());
  ::unlink(edata.c_str());
  ::unlink(messages.c_str());
}

}  // namespace peft
