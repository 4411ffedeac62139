// A stand-alone consumer of egproc bundle files, built against plain libtorch and correctionlib
// (no egproc, no Python): tests/test_cpp_consumers.py compares its outputs with Python's.
//
//   consumer torch         MODEL.pt            INPUT.bin N K OUTPUT.bin   float32 [N, K] -> float32
//   consumer correctionlib JSON(.gz) CORRECTION INPUT.bin N K OUTPUT.bin  float64 [N, K] -> float64 [N]
//
// Binary files are raw little-endian, row-major, without a header.
#include <correction.h>
#include <torch/script.h>

#include <cstdint>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

template <typename T>
std::vector<T> read_raw(const std::string& path, std::size_t count) {
    std::vector<T> values(count);
    std::ifstream in(path, std::ios::binary);
    in.read(reinterpret_cast<char*>(values.data()), static_cast<std::streamsize>(count * sizeof(T)));
    if (!in || in.peek() != std::char_traits<char>::eof())
        throw std::runtime_error(path + " does not hold exactly " + std::to_string(count) + " values");
    return values;
}

template <typename T>
void write_raw(const std::string& path, const T* values, std::size_t count) {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(values), static_cast<std::streamsize>(count * sizeof(T)));
    if (!out) throw std::runtime_error("cannot write " + path);
}

int run_torch(const std::string& model_path, const std::string& input, int64_t n, int64_t k,
              const std::string& output) {
    torch::jit::script::Module module = torch::jit::load(model_path);
    module.eval();
    torch::NoGradGuard no_grad;
    std::vector<float> values = read_raw<float>(input, static_cast<std::size_t>(n * k));
    torch::Tensor x = torch::from_blob(values.data(), {n, k}, torch::kFloat32);
    torch::Tensor y = module.forward({x}).toTensor().to(torch::kFloat32).contiguous();
    std::cout << "output shape: " << y.sizes() << std::endl;
    write_raw(output, y.data_ptr<float>(), static_cast<std::size_t>(y.numel()));
    return 0;
}

int run_correctionlib(const std::string& json, const std::string& name, const std::string& input, int64_t n,
                      int64_t k, const std::string& output) {
    auto cset = correction::CorrectionSet::from_file(json);
    auto corr = cset->at(name);
    if (corr->inputs().size() != static_cast<std::size_t>(k))
        throw std::runtime_error(name + " takes " + std::to_string(corr->inputs().size()) + " inputs, not " +
                                 std::to_string(k));
    std::vector<double> values = read_raw<double>(input, static_cast<std::size_t>(n * k));
    std::vector<double> results(static_cast<std::size_t>(n));
    std::vector<correction::Variable::Type> row(static_cast<std::size_t>(k));
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < k; ++j) row[j] = values[i * k + j];
        results[i] = corr->evaluate(row);
    }
    std::cout << "output shape: [" << n << "]" << std::endl;
    write_raw(output, results.data(), results.size());
    return 0;
}

int main(int argc, char** argv) {
    const std::vector<std::string> args(argv + 1, argv + argc);
    try {
        if (args.size() == 6 && args[0] == "torch")
            return run_torch(args[1], args[2], std::stoll(args[3]), std::stoll(args[4]), args[5]);
        if (args.size() == 7 && args[0] == "correctionlib")
            return run_correctionlib(args[1], args[2], args[3], std::stoll(args[4]), std::stoll(args[5]), args[6]);
    } catch (const std::exception& error) {
        std::cerr << "consumer: " << error.what() << std::endl;
        return 1;
    }
    std::cerr << "usage: consumer torch MODEL.pt INPUT.bin N K OUTPUT.bin\n"
                 "       consumer correctionlib JSON CORRECTION INPUT.bin N K OUTPUT.bin\n";
    return 2;
}
